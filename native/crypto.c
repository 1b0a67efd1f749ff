/*
 * The two hot loops of the encrypted-image paths, in C over OpenSSL's EVP API
 * (src/qcow2/crypto/cipher.ts and afsplit.ts keep the node:crypto versions
 * and fall back to them whenever a call here is absent or refuses).
 *
 * sectorCipherNew(aesBits, mode, key, ivgen, essivKey) and
 * sectorCipherRun(handle, encrypt, firstSector, src, dst): AES-XTS or
 * AES-CBC over whole 512-byte sectors with a fresh IV per sector, as QEMU's
 * qcrypto_block_cipher_encrypt_helper drives its cipher. node:crypto can only
 * give each IV a new Cipheriv object, key schedule included; here the key is
 * scheduled once per direction and each sector only re-IVs the context
 * (EVP_CipherInit_ex with no cipher and no key). IVs as crypto/ivgen-plain.c
 * (32-bit LE sector), ivgen-plain64.c (64-bit LE) and ivgen-essiv.c (the
 * plain64 IV encrypted with AES-ECB under essivKey = hash(key), computed by
 * the caller).
 *
 * afDiffuse(hash, digestLen, material, n, count, d): the diffusion chain of
 * QEMU's crypto/afsplit.c (qcrypto_afsplit_encode/decode): d = 0, then for
 * each of count blocks of n bytes d = H(d ^ block), H hashing d digest-sized
 * piece by piece, each piece prefixed with its big-endian u32 index.
 *
 * OpenSSL is not linked: every EVP function is looked up in the process at
 * first use (Node's binary exports the OpenSSL it carries; a Node built
 * against a shared libcrypto has it in the global scope too). Where a symbol
 * is missing, or the headers were not there at build time, the three calls
 * are simply not defined and the addon's other calls still load; a direct
 * reference would instead abort the process at the first call
 * ("symbol lookup error") under the lazy binding Node's dlopen uses.
 *
 * Every call returns 0 on success or a negative number when it could not do
 * the work (unknown algorithm, an OpenSSL refusal such as XTS with equal key
 * halves), in which case the caller redoes it with node:crypto, which then
 * raises the same error it always did.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <node_api.h>

void ofd_crypto_register(napi_env env, napi_value exports);

#if defined(__has_include)
#if __has_include(<openssl/evp.h>)
#define HAVE_OPENSSL_HEADERS 1
#endif
#endif

#ifndef HAVE_OPENSSL_HEADERS
void ofd_crypto_register(napi_env env, napi_value exports) {
  (void)env;
  (void)exports;
}
#else
#include <openssl/evp.h>

#define SECTOR 512
#define AES_BLOCK 16

/* Function pointers typed from the headers, so a prototype cannot drift. */
#define EVP_FUNCS(X)                                                                                  \
  X(EVP_CIPHER_CTX_new) X(EVP_CIPHER_CTX_free) X(EVP_CipherInit_ex) X(EVP_CipherUpdate)              \
  X(EVP_CipherFinal_ex) X(EVP_CIPHER_CTX_set_padding) X(EVP_aes_128_xts) X(EVP_aes_256_xts)          \
  X(EVP_aes_128_cbc) X(EVP_aes_192_cbc) X(EVP_aes_256_cbc) X(EVP_aes_128_ecb) X(EVP_aes_192_ecb)     \
  X(EVP_aes_256_ecb) X(EVP_MD_CTX_new) X(EVP_MD_CTX_free) X(EVP_DigestInit_ex) X(EVP_DigestUpdate)   \
  X(EVP_DigestFinal_ex) X(EVP_get_digestbyname)

#define DECLARE(f) static __typeof__(f) *p_##f;
EVP_FUNCS(DECLARE)
/* OpenSSL 3 only: an explicitly fetched algorithm skips the implicit fetch a
 * legacy EVP_aes_... / EVP_sha... object costs at every init. */
static __typeof__(EVP_MD_fetch) *p_EVP_MD_fetch;

static pthread_once_t resolve_once = PTHREAD_ONCE_INIT;
static int resolved;

static void resolve(void) {
  int ok = 1;
#define LOOKUP(f) ok = ok && (*(void **)&p_##f = dlsym(RTLD_DEFAULT, #f)) != NULL;
  EVP_FUNCS(LOOKUP)
  *(void **)&p_EVP_MD_fetch = dlsym(RTLD_DEFAULT, "EVP_MD_fetch");
  resolved = ok;
}

static int available(void) {
  pthread_once(&resolve_once, resolve);
  return resolved;
}

/* The hashes checkHashName allows (cipher.ts); an index into the cache. */
static const char *const HASH_NAMES[] = { "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160" };
#define N_HASHES (sizeof HASH_NAMES / sizeof HASH_NAMES[0])
static const EVP_MD *hash_cache[N_HASHES];
static pthread_mutex_t hash_lock = PTHREAD_MUTEX_INITIALIZER;

/* The digest for a name, fetched once per process and kept (never freed). */
static const EVP_MD *digest_for(const char *name) {
  for (size_t i = 0; i < N_HASHES; i++) {
    if (strcmp(name, HASH_NAMES[i]) != 0) continue;
    pthread_mutex_lock(&hash_lock);
    if (hash_cache[i] == NULL) {
      const EVP_MD *md = p_EVP_MD_fetch ? p_EVP_MD_fetch(NULL, name, NULL) : NULL;
      hash_cache[i] = md ? md : p_EVP_get_digestbyname(name);
    }
    const EVP_MD *md = hash_cache[i];
    pthread_mutex_unlock(&hash_lock);
    return md;
  }
  return NULL;
}

enum { MODE_XTS = 0, MODE_CBC = 1 };
enum { IV_PLAIN = 0, IV_PLAIN64 = 1, IV_ESSIV = 2 };

typedef struct {
  const EVP_CIPHER *cipher;
  unsigned char key[64];
  int ivgen;
  /* Keyed on first use per direction; init_failed remembers a refusal. */
  EVP_CIPHER_CTX *ctx[2];
  int init_failed[2];
  EVP_CIPHER_CTX *essiv; /* AES-ECB under hash(key); NULL unless ivgen is essiv */
} sector_cipher;

static const EVP_CIPHER *aes_for(int bits, int mode) {
  if (mode == MODE_XTS) return bits == 128 ? p_EVP_aes_128_xts() : bits == 256 ? p_EVP_aes_256_xts() : NULL;
  if (mode == MODE_CBC) {
    return bits == 128 ? p_EVP_aes_128_cbc() : bits == 192 ? p_EVP_aes_192_cbc() : bits == 256 ? p_EVP_aes_256_cbc() : NULL;
  }
  return NULL;
}

static void sector_cipher_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  sector_cipher *c = data;
  /* EVP_CIPHER_CTX_free cleanses the key schedule; the raw key is ours to wipe. */
  for (int i = 0; i < 2; i++) if (c->ctx[i]) p_EVP_CIPHER_CTX_free(c->ctx[i]);
  if (c->essiv) p_EVP_CIPHER_CTX_free(c->essiv);
  explicit_bzero(c->key, sizeof c->key);
  free(c);
}

/* A Uint8Array argument's bytes; 0, or -1 when it is not one. */
static int get_bytes(napi_env env, napi_value v, unsigned char **data, size_t *len) {
  bool is_ta = false;
  napi_typedarray_type type;
  void *p;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return -1;
  if (napi_get_typedarray_info(env, v, &type, len, &p, NULL, NULL) != napi_ok || type != napi_uint8_array) return -1;
  *data = p;
  return 0;
}

static napi_value make_int(napi_env env, int v) {
  napi_value out;
  napi_create_int32(env, v, &out);
  return out;
}

static napi_value undefined_value(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

/* (aesBits, mode 0 xts | 1 cbc, key, ivgen 0 plain | 1 plain64 | 2 essiv, essivKey?) -> handle or undefined */
static napi_value sector_cipher_new(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int32_t bits, mode, ivgen;
  unsigned char *key, *essiv_key = NULL;
  size_t key_len, essiv_len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 ||
      napi_get_value_int32(env, argv[0], &bits) != napi_ok || napi_get_value_int32(env, argv[1], &mode) != napi_ok ||
      get_bytes(env, argv[2], &key, &key_len) < 0 || napi_get_value_int32(env, argv[3], &ivgen) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (aesBits, mode, key, ivgen[, essivKey])");
    return NULL;
  }
  const EVP_CIPHER *cipher = aes_for(bits, mode);
  size_t want = (size_t)bits / 8 * (mode == MODE_XTS ? 2 : 1);
  if (cipher == NULL || key_len != want || ivgen < IV_PLAIN || ivgen > IV_ESSIV) return undefined_value(env);
  if (ivgen == IV_ESSIV) {
    if (argc < 5 || get_bytes(env, argv[4], &essiv_key, &essiv_len) < 0) return undefined_value(env);
    if (essiv_len != 16 && essiv_len != 24 && essiv_len != 32) return undefined_value(env);
  }
  sector_cipher *c = calloc(1, sizeof *c);
  if (c == NULL) return undefined_value(env);
  c->cipher = cipher;
  c->ivgen = ivgen;
  memcpy(c->key, key, key_len);
  if (ivgen == IV_ESSIV) {
    const EVP_CIPHER *ecb = essiv_len == 16 ? p_EVP_aes_128_ecb() : essiv_len == 24 ? p_EVP_aes_192_ecb() : p_EVP_aes_256_ecb();
    c->essiv = p_EVP_CIPHER_CTX_new();
    if (c->essiv == NULL || p_EVP_CipherInit_ex(c->essiv, ecb, NULL, essiv_key, NULL, 1) != 1 ||
        p_EVP_CIPHER_CTX_set_padding(c->essiv, 0) != 1) {
      sector_cipher_free(env, c, NULL);
      return undefined_value(env);
    }
  }
  napi_value handle;
  if (napi_create_external(env, c, sector_cipher_free, NULL, &handle) != napi_ok) {
    sector_cipher_free(env, c, NULL);
    return undefined_value(env);
  }
  return handle;
}

/* The keyed context for one direction, made on first use; NULL when OpenSSL refused the key. */
static EVP_CIPHER_CTX *keyed(sector_cipher *c, int enc) {
  if (c->ctx[enc]) return c->ctx[enc];
  if (c->init_failed[enc]) return NULL;
  EVP_CIPHER_CTX *ctx = p_EVP_CIPHER_CTX_new();
  if (ctx == NULL || p_EVP_CipherInit_ex(ctx, c->cipher, NULL, c->key, NULL, enc) != 1 ||
      p_EVP_CIPHER_CTX_set_padding(ctx, 0) != 1) {
    if (ctx) p_EVP_CIPHER_CTX_free(ctx);
    c->init_failed[enc] = 1;
    return NULL;
  }
  c->ctx[enc] = ctx;
  return ctx;
}

static int sector_iv(sector_cipher *c, uint64_t sector, unsigned char iv[AES_BLOCK]) {
  memset(iv, 0, AES_BLOCK);
  uint64_t v = c->ivgen == IV_PLAIN ? (sector & 0xffffffffu) : sector;
  for (int i = 0; i < 8; i++) iv[i] = (unsigned char)(v >> (8 * i));
  if (c->ivgen != IV_ESSIV) return 0;
  unsigned char plain[AES_BLOCK];
  int n = 0;
  memcpy(plain, iv, AES_BLOCK);
  return p_EVP_CipherUpdate(c->essiv, iv, &n, plain, AES_BLOCK) == 1 && n == AES_BLOCK ? 0 : -1;
}

/* (handle, encrypt, firstSector, src, dst) -> 0 or negative; src and dst are whole sectors of one length. */
static napi_value sector_cipher_run(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  sector_cipher *c;
  bool enc;
  int64_t first;
  unsigned char *src, *dst;
  size_t src_len, dst_len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5 ||
      napi_get_value_external(env, argv[0], (void **)&c) != napi_ok || napi_get_value_bool(env, argv[1], &enc) != napi_ok ||
      napi_get_value_int64(env, argv[2], &first) != napi_ok || get_bytes(env, argv[3], &src, &src_len) < 0 ||
      get_bytes(env, argv[4], &dst, &dst_len) < 0) {
    napi_throw_type_error(env, NULL, "expected (handle, encrypt, firstSector, src, dst)");
    return NULL;
  }
  if (first < 0 || src_len != dst_len || src_len % SECTOR != 0) return make_int(env, -1);
  EVP_CIPHER_CTX *ctx = keyed(c, enc ? 1 : 0);
  if (ctx == NULL) return make_int(env, -2);
  unsigned char iv[AES_BLOCK];
  for (size_t pos = 0; pos < src_len; pos += SECTOR) {
    int n = 0, m = 0;
    if (sector_iv(c, (uint64_t)first + pos / SECTOR, iv) < 0) return make_int(env, -3);
    /* A new IV on the keyed context: the generic and XTS providers keep the key schedule. */
    if (p_EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, enc ? 1 : 0) != 1 ||
        p_EVP_CipherUpdate(ctx, dst + pos, &n, src + pos, SECTOR) != 1 ||
        p_EVP_CipherFinal_ex(ctx, dst + pos + n, &m) != 1 || n + m != SECTOR) {
      return make_int(env, -4);
    }
  }
  return make_int(env, 0);
}

/* (hash, digestLen, material, n, count, d) -> 0 or negative; d (n bytes, zeros in) gets the chain's result. */
static napi_value af_diffuse(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  char name[16];
  size_t name_len;
  int32_t digest_len, n, count;
  unsigned char *material, *d;
  size_t material_len, d_len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 6 ||
      napi_get_value_string_utf8(env, argv[0], name, sizeof name, &name_len) != napi_ok ||
      napi_get_value_int32(env, argv[1], &digest_len) != napi_ok || get_bytes(env, argv[2], &material, &material_len) < 0 ||
      napi_get_value_int32(env, argv[3], &n) != napi_ok || napi_get_value_int32(env, argv[4], &count) != napi_ok ||
      get_bytes(env, argv[5], &d, &d_len) < 0) {
    napi_throw_type_error(env, NULL, "expected (hash, digestLen, material, n, count, d)");
    return NULL;
  }
  if (name_len >= sizeof name - 1 || n <= 0 || count < 0 || digest_len <= 0 || digest_len > EVP_MAX_MD_SIZE || d_len != (size_t)n ||
      material_len / (size_t)n < (size_t)count) {
    return make_int(env, -1);
  }
  const EVP_MD *md = digest_for(name);
  if (md == NULL) return make_int(env, -2);
  EVP_MD_CTX *ctx = p_EVP_MD_CTX_new();
  if (ctx == NULL) return make_int(env, -3);
  unsigned char piece[4 + EVP_MAX_MD_SIZE], digest[EVP_MAX_MD_SIZE];
  int rc = 0;
  memset(d, 0, (size_t)n);
  for (int32_t b = 0; b < count && rc == 0; b++) {
    const unsigned char *block = material + (size_t)b * (size_t)n;
    for (int32_t i = 0; i < n; i++) d[i] ^= block[i];
    for (int32_t pos = 0, idx = 0; pos < n && rc == 0; pos += digest_len, idx++) {
      int len = n - pos < digest_len ? n - pos : digest_len;
      unsigned int out_len = 0;
      piece[0] = (unsigned char)(idx >> 24);
      piece[1] = (unsigned char)(idx >> 16);
      piece[2] = (unsigned char)(idx >> 8);
      piece[3] = (unsigned char)idx;
      memcpy(piece + 4, d + pos, (size_t)len);
      if (p_EVP_DigestInit_ex(ctx, md, NULL) != 1 || p_EVP_DigestUpdate(ctx, piece, 4 + (size_t)len) != 1 ||
          p_EVP_DigestFinal_ex(ctx, digest, &out_len) != 1 || out_len != (unsigned int)digest_len) {
        rc = -4;
        break;
      }
      memcpy(d + pos, digest, (size_t)len);
    }
  }
  p_EVP_MD_CTX_free(ctx);
  explicit_bzero(piece, sizeof piece);
  explicit_bzero(digest, sizeof digest);
  return make_int(env, rc);
}

void ofd_crypto_register(napi_env env, napi_value exports) {
  if (!available()) return;
  napi_property_descriptor props[] = {
    { "sectorCipherNew", NULL, sector_cipher_new, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sectorCipherRun", NULL, sector_cipher_run, NULL, NULL, NULL, napi_enumerable, NULL },
    { "afDiffuse", NULL, af_diffuse, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
#endif
