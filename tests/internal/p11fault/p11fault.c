/*
 * p11fault: a fault-injecting PKCS#11 module for keyarc's end-to-end tests.
 *
 * It loads the real module named by P11FAULT_MODULE (default SoftHSM's, so that other
 * processes of a test that load it without the variable still work), hands the
 * caller a copy of that module's CK_FUNCTION_LIST, and puts wrappers in a few of its slots:
 * C_Sign, C_SignFinal, C_Decrypt, C_DecryptFinal and C_GenerateKeyPair. Every other call goes
 * straight to the real module.
 *
 * The trigger is the file named by P11FAULT_TRIGGER, read at every wrapped call, so a test
 * changes it while the process runs. Absent or empty: no fault. Otherwise it holds
 * whitespace-separated rules, each "CODE" (every wrapped function) or "NAME=CODE" (that
 * function only), CODE in hex as in pkcs11t.h:
 *
 *     C_Sign=0x6 C_SignFinal=0x6      signing answers CKR_FUNCTION_FAILED
 *     C_Decrypt=0x30                  decryption answers CKR_DEVICE_ERROR
 *     0x5                             all five answer CKR_GENERAL_ERROR
 *
 * A failed C_Sign or C_Decrypt ends the operation it belongs to (PKCS#11 2.40, 5.2): a
 * wrapper that fails a call first finishes the real operation into a scratch buffer, which
 * it wipes, so the session is free for the next C_SignInit or C_DecryptInit as after a real
 * failure. Nothing is written to stdout or stderr: no key material, no PIN, no plaintext.
 *
 * Build: gcc -shared -fPIC -I<dir of pkcs11.h> -o p11fault.so p11fault.c -ldl
 * (the tests take pkcs11.h from github.com/miekg/pkcs11 in the module cache).
 */
#define CK_PTR *
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType (*name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType (*name)
#ifndef NULL_PTR
#define NULL_PTR 0
#endif
#include "pkcs11.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_FUNCTION_LIST_PTR real; /* the real module's list */
static CK_FUNCTION_LIST ours;     /* a copy, with our wrappers in some slots */

/* fault returns the code the trigger file sets for the function name, or CKR_OK. */
static CK_RV fault(const char *name)
{
	const char *path = getenv("P11FAULT_TRIGGER");
	char buf[512], *tok, *save = NULL;
	CK_RV rv = CKR_OK;
	FILE *f;
	size_t n;

	if (path == NULL || (f = fopen(path, "r")) == NULL)
		return CKR_OK;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	for (tok = strtok_r(buf, " \t\r\n", &save); tok != NULL; tok = strtok_r(NULL, " \t\r\n", &save)) {
		char *eq = strchr(tok, '=');
		if (eq == NULL) {
			rv = (CK_RV)strtoul(tok, NULL, 16); /* a rule for every wrapped function */
		} else {
			*eq = '\0';
			if (strcmp(tok, name) == 0)
				return (CK_RV)strtoul(eq + 1, NULL, 16);
		}
	}
	return rv;
}

/*
 * finish runs a real single-part or final call (C_Sign, C_Decrypt...) to its end into a
 * scratch buffer and wipes it, so that the operation the caller started is over. op is
 * called as op(session, in, in_len, out, &out_len); for the *Final calls in is unused.
 */
typedef CK_RV (*outfn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);

static void finish(outfn op, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len)
{
	CK_ULONG len = 0;
	CK_BYTE_PTR out;

	if (op(s, in, in_len, NULL_PTR, &len) != CKR_OK) /* an error ends it already */
		return;
	out = calloc(1, len ? len : 1);
	if (out == NULL)
		return;
	op(s, in, in_len, out, &len);
	memset(out, 0, len); /* a plaintext is a secret; best effort */
	free(out);
}

static CK_RV sign_final(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
	(void)in, (void)in_len;
	return real->C_SignFinal(s, out, out_len);
}

static CK_RV decrypt_final(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
	(void)in, (void)in_len;
	return real->C_DecryptFinal(s, out, out_len);
}

static CK_RV w_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG data_len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
	CK_RV rv = fault("C_Sign");
	if (rv == CKR_OK)
		return real->C_Sign(s, data, data_len, sig, sig_len);
	finish(real->C_Sign, s, data, data_len);
	return rv;
}

static CK_RV w_SignFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
	CK_RV rv = fault("C_SignFinal");
	if (rv == CKR_OK)
		return real->C_SignFinal(s, sig, sig_len);
	finish(sign_final, s, NULL_PTR, 0);
	return rv;
}

static CK_RV w_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR ct, CK_ULONG ct_len, CK_BYTE_PTR pt, CK_ULONG_PTR pt_len)
{
	CK_RV rv = fault("C_Decrypt");
	if (rv == CKR_OK)
		return real->C_Decrypt(s, ct, ct_len, pt, pt_len);
	finish(real->C_Decrypt, s, ct, ct_len);
	return rv;
}

static CK_RV w_DecryptFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR pt, CK_ULONG_PTR pt_len)
{
	CK_RV rv = fault("C_DecryptFinal");
	if (rv == CKR_OK)
		return real->C_DecryptFinal(s, pt, pt_len);
	finish(decrypt_final, s, NULL_PTR, 0);
	return rv;
}

static CK_RV w_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m,
	CK_ATTRIBUTE_PTR pub, CK_ULONG npub, CK_ATTRIBUTE_PTR priv, CK_ULONG npriv,
	CK_OBJECT_HANDLE_PTR hpub, CK_OBJECT_HANDLE_PTR hpriv)
{
	CK_RV rv = fault("C_GenerateKeyPair");
	if (rv != CKR_OK)
		return rv; /* nothing was made: no operation to finish */
	return real->C_GenerateKeyPair(s, m, pub, npub, priv, npriv, hpub, hpriv);
}

/* C_GetFunctionList loads the real module once and returns our copy of its list. */
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
	CK_RV rv = CKR_OK;

	if (list == NULL_PTR)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&load_mu);
	if (real == NULL) {
		const char *path = getenv("P11FAULT_MODULE");
		if (path == NULL || *path == '\0')
			path = "/usr/lib/softhsm/libsofthsm2.so";
		void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
		CK_C_GetFunctionList get = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
		CK_FUNCTION_LIST_PTR l = NULL;

		if (get == NULL || get(&l) != CKR_OK || l == NULL) {
			rv = CKR_GENERAL_ERROR; /* no module to forward to: refuse to load */
		} else {
			real = l;
			ours = *l;
			ours.C_Sign = w_Sign;
			ours.C_SignFinal = w_SignFinal;
			ours.C_Decrypt = w_Decrypt;
			ours.C_DecryptFinal = w_DecryptFinal;
			ours.C_GenerateKeyPair = w_GenerateKeyPair;
		}
	}
	pthread_mutex_unlock(&load_mu);
	if (rv == CKR_OK)
		*list = &ours;
	return rv;
}
