/*
 * Open file description (OFD) byte-range locks for Node, which has no fcntl.
 *
 * QEMU's file-posix driver locks single bytes of an image (raw_apply_lock_bytes
 * and raw_check_lock_bytes, through qemu_lock_fd / qemu_lock_fd_test in
 * util/osdep.c) with F_OFD_SETLK and tests them with F_OFD_GETLK. OFD locks
 * belong to the open file description, so they conflict between two opens of
 * one file even in the same process, and closing another descriptor of the
 * process does not drop them (classic POSIX record locks do both wrong).
 *
 * Two calls, both non-blocking: setlk(fd, start, len, type) and
 * getlk(fd, start, len, type). type is 0 unlock, 1 shared (F_RDLCK),
 * 2 exclusive (F_WRLCK). setlk returns 0 or -errno; getlk returns the type of
 * a conflicting lock another description holds (0 when there is none) or -errno.
 *
 * The same addon carries the one other file call Node lacks, fallocate:
 * zeroRange(fd, offset, len) makes a range read as zeros without writing a
 * buffer (FALLOC_FL_ZERO_RANGE, growing the file when the range ends past
 * it), as QEMU's file-posix handle_aiocb_write_zeroes does for the qcow2
 * driver's handle_alloc_space. Returns 0 or -errno (-EOPNOTSUPP where the
 * file system or the kernel cannot).
 *
 * And a hint that keeps the disk busy while a sequential copy computes
 * (QEMU's convert gets the same from its in-flight coroutines, -m):
 * willNeed(fd, offset, len) is posix_fadvise(POSIX_FADV_WILLNEED), which
 * queues the range's reads without waiting for them. Returns 0 or -errno
 * and changes no data.
 *
 * And its counterpart on the write side: startWriteback(fd, offset, len) is
 * sync_file_range(SYNC_FILE_RANGE_WRITE), which starts writing the range's
 * dirty pages to the device without waiting for them and without any
 * durability promise (the caller's fsync still gives that). A long copy
 * that starts writeback behind itself overlaps the device's writing with
 * its own copying, instead of leaving all of it to the final fsync.
 * Returns 0 or -errno and changes no data.
 *
 * Block status needs where a file's holes are, as QEMU's file-posix
 * find_allocation asks: seekData(fd, offset, hole) is lseek(SEEK_DATA), or
 * lseek(SEEK_HOLE) when hole is true. Returns the offset found or -errno
 * (-ENXIO: no data at or after offset); a double, as offsets pass 2^31.
 *
 * O_DIRECT writes need buffers aligned in memory, which Node cannot ask for:
 * addressMod(view, align) is the address of a typed array's first byte
 * modulo align (a power of two), so a caller can start its buffers at an
 * aligned byte of a larger allocation (ArrayBuffer memory never moves).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

#if !defined(F_OFD_SETLK) || !defined(F_OFD_GETLK)
#error "OFD locks (F_OFD_SETLK, F_OFD_GETLK) are not available on this system"
#endif

static int to_fl_type(int32_t t) {
  switch (t) {
    case 0: return F_UNLCK;
    case 1: return F_RDLCK;
    case 2: return F_WRLCK;
    default: return -1;
  }
}

static int from_fl_type(short t) {
  if (t == F_RDLCK) return 1;
  if (t == F_WRLCK) return 2;
  return 0;
}

/* Reads (fd, start, len, type) and validates them; returns 0 or throws and returns -1. */
static int read_args(napi_env env, napi_callback_info info, struct flock *fl, int *fd) {
  size_t argc = 4;
  napi_value argv[4];
  int32_t ifd, itype;
  int64_t start, len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4 ||
      napi_get_value_int32(env, argv[0], &ifd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &start) != napi_ok ||
      napi_get_value_int64(env, argv[2], &len) != napi_ok ||
      napi_get_value_int32(env, argv[3], &itype) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (fd, start, len, type) as numbers");
    return -1;
  }
  int type = to_fl_type(itype);
  if (ifd < 0 || start < 0 || len < 0 || type < 0) {
    napi_throw_range_error(env, NULL, "fd, start and len must be >= 0 and type 0, 1 or 2");
    return -1;
  }
  memset(fl, 0, sizeof *fl);
  fl->l_whence = SEEK_SET;
  fl->l_start = (off_t)start;
  fl->l_len = (off_t)len;
  fl->l_type = (short)type;
  fl->l_pid = 0; /* required to be 0 for OFD commands */
  *fd = ifd;
  return 0;
}

static napi_value make_int(napi_env env, int v) {
  napi_value out;
  napi_create_int32(env, v, &out);
  return out;
}

static napi_value setlk(napi_env env, napi_callback_info info) {
  struct flock fl;
  int fd, r;
  if (read_args(env, info, &fl, &fd) < 0) return NULL;
  do {
    r = fcntl(fd, F_OFD_SETLK, &fl);
  } while (r == -1 && errno == EINTR);
  return make_int(env, r == -1 ? -errno : 0);
}

static napi_value getlk(napi_env env, napi_callback_info info) {
  struct flock fl;
  int fd;
  if (read_args(env, info, &fl, &fd) < 0) return NULL;
  if (fl.l_type == F_UNLCK) {
    napi_throw_range_error(env, NULL, "getlk tests a shared or exclusive lock, not an unlock");
    return NULL;
  }
  if (fcntl(fd, F_OFD_GETLK, &fl) == -1) return make_int(env, -errno);
  return make_int(env, from_fl_type(fl.l_type));
}

static napi_value zero_range(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  int64_t offset, len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[2], &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (fd, offset, len) as numbers");
    return NULL;
  }
  if (fd < 0 || offset < 0 || len <= 0) {
    napi_throw_range_error(env, NULL, "fd and offset must be >= 0 and len > 0");
    return NULL;
  }
#ifdef FALLOC_FL_ZERO_RANGE
  int r;
  do {
    r = fallocate(fd, FALLOC_FL_ZERO_RANGE, (off_t)offset, (off_t)len);
  } while (r == -1 && errno == EINTR);
  return make_int(env, r == -1 ? -errno : 0);
#else
  return make_int(env, -EOPNOTSUPP);
#endif
}

/* Reads (fd, offset, len) with fd, offset >= 0 and len > 0; returns 0 or throws and returns -1. */
static int read_range_args(napi_env env, napi_callback_info info, int32_t *fd, int64_t *offset, int64_t *len) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
      napi_get_value_int32(env, argv[0], fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], offset) != napi_ok ||
      napi_get_value_int64(env, argv[2], len) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (fd, offset, len) as numbers");
    return -1;
  }
  if (*fd < 0 || *offset < 0 || *len <= 0) {
    napi_throw_range_error(env, NULL, "fd and offset must be >= 0 and len > 0");
    return -1;
  }
  return 0;
}

static napi_value will_need(napi_env env, napi_callback_info info) {
  int32_t fd;
  int64_t offset, len;
  if (read_range_args(env, info, &fd, &offset, &len) < 0) return NULL;
  /* posix_fadvise returns the error number itself rather than setting errno. */
  return make_int(env, -posix_fadvise(fd, (off_t)offset, (off_t)len, POSIX_FADV_WILLNEED));
}

static napi_value start_writeback(napi_env env, napi_callback_info info) {
  int32_t fd;
  int64_t offset, len;
  if (read_range_args(env, info, &fd, &offset, &len) < 0) return NULL;
  int r;
  do {
    r = sync_file_range(fd, (off_t)offset, (off_t)len, SYNC_FILE_RANGE_WRITE);
  } while (r == -1 && errno == EINTR);
  return make_int(env, r == -1 ? -errno : 0);
}

static napi_value address_mod(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int64_t align;
  bool is_view = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_is_typedarray(env, argv[0], &is_view) != napi_ok || !is_view ||
      napi_get_value_int64(env, argv[1], &align) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (typed array, align)");
    return NULL;
  }
  if (align <= 0 || align > (1 << 30) || (align & (align - 1)) != 0) {
    napi_throw_range_error(env, NULL, "align must be a power of two up to 2^30");
    return NULL;
  }
  void *data = NULL;
  if (napi_get_typedarray_info(env, argv[0], NULL, NULL, &data, NULL, NULL) != napi_ok) {
    napi_throw_type_error(env, NULL, "cannot read the typed array");
    return NULL;
  }
  return make_int(env, (int)((uintptr_t)data & (uintptr_t)(align - 1)));
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  int64_t offset;
  bool hole = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_bool(env, argv[2], &hole) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (fd, offset, hole) as number, number, boolean");
    return NULL;
  }
  if (fd < 0 || offset < 0) {
    napi_throw_range_error(env, NULL, "fd and offset must be >= 0");
    return NULL;
  }
  off_t r = lseek(fd, (off_t)offset, hole ? SEEK_HOLE : SEEK_DATA);
  napi_value out;
  napi_create_double(env, r == (off_t)-1 ? -(double)errno : (double)r, &out);
  return out;
}

/* native/crypto.c: the sector cipher and AF diffusion, defined only where OpenSSL is reachable. */
void ofd_crypto_register(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "setlk", NULL, setlk, NULL, NULL, NULL, napi_enumerable, NULL },
    { "getlk", NULL, getlk, NULL, NULL, NULL, napi_enumerable, NULL },
    { "zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_enumerable, NULL },
    { "willNeed", NULL, will_need, NULL, NULL, NULL, napi_enumerable, NULL },
    { "startWriteback", NULL, start_writeback, NULL, NULL, NULL, napi_enumerable, NULL },
    { "addressMod", NULL, address_mod, NULL, NULL, NULL, napi_enumerable, NULL },
    { "seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  ofd_crypto_register(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
