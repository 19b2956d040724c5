package hsm

import "crypto/elliptic"

func ecdsaP256() elliptic.Curve { return elliptic.P256() }
