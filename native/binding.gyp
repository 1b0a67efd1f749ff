{
  "targets": [
    {
      "target_name": "ofd_lock",
      "sources": ["ofd_lock.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
