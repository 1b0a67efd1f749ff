"""The qcow2-harness cmd: protocol loop (docs/cmd-protocol.md, protocol 2), written once.

An adapter subclasses Reader (an implementation that only opens and reads
images) or Writer (one that creates images and runs ops), then calls
serve(MyReader()). The loop reads one JSON request per line from stdin and
answers one JSON response per line on stdout; while a method runs, Python's
sys.stdout points at stderr, so a stray print() in the implementation cannot
break the protocol.

Errors are values: raise Unsupported(message, features) to decline an image
or configuration (counted by the harness, not a failure), Refused(message) for
a clean refusal of an invalid request; any other exception is answered as an
internal error (a failure) with the traceback on stderr.
"""
import base64
import json
import sys
import traceback

PROTOCOL_VERSION = 2


class Unsupported(Exception):
    """The implementation does not do this; `features` names what it lacks (qemu-img option spellings)."""

    def __init__(self, message, features=()):
        super().__init__(message)
        self.features = list(features)


class Refused(Exception):
    """A clean refusal of a request the implementation judges invalid."""


class Reader:
    """Override open, read and close; read_snapshot only if the implementation can read snapshots."""

    #: an "implementation version" string recorded with findings, e.g. "libqcow 20201213"
    implementation = None
    #: whether read_snapshot is implemented
    snapshots = False

    def check_config(self, params):
        """Called with the `create` params before any image exists: raise Unsupported to decline early."""

    def open(self, path, backing):
        """Open `path` read-only; `backing` is a list of {"file","path","format"} dicts, nearest first."""
        raise NotImplementedError

    def read(self, offset, length):
        """Return exactly `length` bytes of the guest view at `offset`."""
        raise NotImplementedError

    def size(self):
        """The virtual disk size of the open image as the implementation sees it, or None to not say.

        Returned in the `open` result; the harness holds it to the model's size."""
        return None

    def read_snapshot(self, snapshot_id, length):
        """Return the first `length` bytes (or fewer) of internal snapshot `snapshot_id`."""
        raise Unsupported("snapshots are not readable")

    def close(self):
        pass


class Writer:
    """Override create, op, read, sync (and read_snapshot, check if offered)."""

    implementation = None
    #: op kinds offered (docs/cmd-protocol.md `capabilities`); None: all of them
    capabilities = None
    #: whether check() is implemented
    has_check = False

    def create(self, params):
        raise NotImplementedError

    def op(self, text, data):
        """Run one op line (`data` is bytes for `write` and `write -c`, else None)."""
        raise NotImplementedError

    def read(self, offset, length):
        raise NotImplementedError

    def read_snapshot(self, snapshot_id, length):
        raise Unsupported("snapshots are not readable")

    def sync(self):
        raise NotImplementedError

    def check(self):
        raise Unsupported("no check")

    def close(self):
        pass


def _b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def _dispatch(impl, method, params):
    if method == "create":
        if isinstance(impl, Reader):
            impl.check_config(params)
            return {"role": "reader", "snapshots": bool(impl.snapshots), "implementation": impl.implementation}
        impl.create(params)
        result = {"check": bool(impl.has_check), "implementation": impl.implementation}
        if impl.capabilities is not None:
            result["capabilities"] = list(impl.capabilities)
        return result
    if method == "read":
        off, length = int(params["offset"]), int(params["length"])
        data = bytes(impl.read(off, length)) if length > 0 else b""
        if len(data) != length:
            raise RuntimeError("read returned %d bytes at %d, %d asked" % (len(data), off, length))
        return {"data": _b64(data)}
    if method == "readSnapshot":
        length = int(params["length"])
        return {"data": _b64(bytes(impl.read_snapshot(str(params["id"]), length))[:length])}
    if isinstance(impl, Reader) and method == "open":
        impl.open(params["path"], list(params.get("backing") or []))
        size = impl.size()
        return {} if size is None else {"size": int(size)}
    if isinstance(impl, Writer):
        if method == "op":
            data = params.get("data")
            impl.op(params["op"], base64.b64decode(data) if data is not None else None)
            return {}
        if method == "sync":
            impl.sync()
            return {}
        if method == "check":
            return impl.check()
    raise Refused("unknown method %r" % method)


def serve(impl, stdin=None, stdout=None):
    """Answers requests until `quit` or end of input; returns the process exit status (0)."""
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    real_stdout = sys.stdout
    try:
        for line in stdin:
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                rid, method, params = req.get("id"), req.get("method"), req.get("params") or {}
            except (ValueError, AttributeError) as e:
                # Not a request: say so on stderr and go on (the harness never sends this).
                sys.stderr.write("qcow2_harness_kit: bad request line: %s\n" % e)
                continue
            if method == "quit":
                break
            sys.stdout = sys.stderr
            try:
                resp = {"id": rid, "ok": True, "result": _dispatch(impl, method, params)}
            except Unsupported as e:
                resp = {"id": rid, "ok": False, "code": "unsupported", "error": str(e), "features": e.features}
            except Refused as e:
                resp = {"id": rid, "ok": False, "code": "refused", "error": str(e)}
            except Exception as e:  # the implementation failed: a finding, with its traceback
                traceback.print_exc(file=sys.stderr)
                resp = {"id": rid, "ok": False, "code": "internal", "error": "%s: %s" % (type(e).__name__, e)}
            finally:
                sys.stdout = real_stdout
            out.write(json.dumps(resp) + "\n")
            out.flush()
    finally:
        try:
            impl.close()
        except Exception:
            traceback.print_exc(file=sys.stderr)
    return 0
