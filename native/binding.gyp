{
  "targets": [
    {
      "target_name": "ofd_lock",
      "sources": ["ofd_lock.c", "crypto.c"],
      "libraries": ["-ldl", "-lpthread"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "qh_forkserver",
      "sources": ["forkserver.c"],
      "libraries": ["-ldl"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
