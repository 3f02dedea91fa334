"""ONNX Runtime sessions that honour the graph's own session hint.

A graph may carry, in its `metadata_props`, the ORT graph optimizers that make it slower
(`toolkit.ort.disabled_optimizers`, a JSON list). The int8 search writes it when it measured the gain: ORT's
QDQ propagation moves a QuantizeLinear above a MaxPool that follows an fp32 convolution, so the pooling runs
on uint8 in ORT's generic NCHW kernel instead of its blocked fp32 one (on the digits CNN with its first
convolution in fp32: the pooling alone 0.71 ms against 0.02 ms at batch 256, the graph 3.6x slower than
without the move). The hint lives in the file, so every reader of the graph here (the artifact, `toolkit
predict`, the timing) runs what was measured. ORT keeps no session setting in the file format, hence this
small reader.

Only optimizers named in ALLOWED are honoured; a file cannot switch off anything else.
"""

from __future__ import annotations

import json
import os

DISABLED_OPTIMIZERS_KEY = "toolkit.ort.disabled_optimizers"
ALLOWED = frozenset({"QDQPropagationTransformer"})
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
MEMORY_SHARE = 0.5  # of the memory free for use: the most ONNX Runtime may hold on the CPU, all sessions together
_memory_cap: int | None = None


def disabled_optimizers(metadata: dict) -> list[str]:
    """The allowed optimizer names a graph's metadata map asks to disable (none for a malformed entry)."""
    try:
        names = json.loads(metadata.get(DISABLED_OPTIMIZERS_KEY, "[]"))
    except ValueError:
        return []
    return sorted({n for n in names if isinstance(n, str) and n in ALLOWED}) if isinstance(names, list) else []


def providers_for(device: str, available) -> list:
    """ONNX Runtime's execution providers for a session serving on `device` ("cpu", "cuda" or "cuda:N"), given
    the providers this build of ONNX Runtime has (`available`).

    On a GPU: CUDA's provider first where the build has it (onnxruntime-gpu), with the CPU's after it for the
    operators CUDA's lacks (ORT assigns each node to the first provider that has a kernel for it); a CPU-only
    build runs the whole graph on the CPU, which the session's `get_providers()` then says. TensorRT's provider
    is not asked for: it compiles an engine per session and input shape (seconds to minutes), and auto builds
    dozens of sessions.
    """
    if device == "cpu":
        return [CPU]
    if CUDA not in available:
        return [CPU]
    index = device.partition(":")[2]
    return [(CUDA, {"device_id": int(index)}) if index else CUDA, CPU]


def session_device(session) -> str:
    """Where a session computes: "cuda" when its first provider is CUDA's, else "cpu"."""
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


def memory_cap() -> int:
    """Bytes ONNX Runtime may allocate on the CPU in this process (0: no cap), set up on the first call.

    A graph can compute a tensor's size from the input's values (a ConstantOfShape fed by a ReduceMax of the
    input), which no check of the file can bound: `trainers.usermodel` bounds every size that shape inference
    fixes, but a 1 KB graph and one input cell of 3e9 asked ORT for 12 GB in one buffer, which Linux grants
    lazily and then kills a process (or its neighbour) for when the pages are touched. ORT's own arena can
    refuse it: one CPU arena is registered with ORT's environment with a limit of MEMORY_SHARE of the memory
    available when the first session is made (Linux's MemAvailable; physical memory elsewhere), and every session here uses it (`session.use_env_allocators`), so the request fails with ORT's
    "Available memory ... is smaller than requested bytes" and `trainers.errors.describe` makes that one line
    (exit code 2). The arena is ORT's default CPU allocator; only its limit and its sharing across sessions
    change (a freed session's blocks are reused by the next instead of returned to the system).
    """
    global _memory_cap
    if _memory_cap is None:
        import onnxruntime as ort

        try:
            limit = int(_available_bytes() * MEMORY_SHARE)
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(limit, -1, -1, -1))
            _memory_cap = limit
        except Exception:  # no sysconf (Windows), an ORT without environment allocators: no cap
            _memory_cap = 0
    return _memory_cap


def _available_bytes() -> int:
    """Memory available for use now: Linux's MemAvailable (free memory plus caches it can drop), else physical."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def inference_session(model, options=None, device: str = "cpu"):
    """An `InferenceSession` on `model` (bytes or a path) serving on `device` (`providers_for`), with the
    graph's session hint applied.

    The hint is read from the session ORT built (no second parse of the file); a graph that carries one is
    loaded a second time with those optimizers disabled. Graphs without it, every user's file among them,
    load once, as plain ORT does. Its CPU allocations share one arena capped at `memory_cap()`.
    """
    import onnxruntime as ort

    providers = providers_for(device, ort.get_available_providers())
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors reach the caller as exceptions: no ORT log lines on stderr
    if memory_cap():
        options.add_session_config_entry("session.use_env_allocators", "1")
    session = ort.InferenceSession(model, options, providers=providers)
    names = disabled_optimizers(session.get_modelmeta().custom_metadata_map)
    if names:
        session = ort.InferenceSession(model, options, providers=providers, disabled_optimizers=names)
    return session


def first_output(session):
    """x -> the first output of `session` (a session with one input, from `inference_session`).

    Calls the compiled session that `InferenceSession.run` wraps. That wrapper checks, on every call, the feed's
    names against the graph's inputs, the feed's OrtValues, graph capture, and lists the output names, each
    through calls into the binding: 1.1-1.5 us of a 10-11 us call at batch 1 (the pruned digits CNN, one thread),
    about 13%. Here the feed is built from the graph's one input name and holds a NumPy array in host memory
    (ORT copies it to a GPU provider's device, and the output back), so every one of those checks holds by
    construction, and the output names are listed once. Falls back to the public call where the binding is not
    exposed (another ONNX Runtime build).
    """
    name = session.get_inputs()[0].name
    outputs = [session.get_outputs()[0].name]
    bound = getattr(session, "_sess", None)
    if bound is None or not hasattr(bound, "run"):
        return lambda x: session.run(outputs, {name: x})[0]
    run = bound.run
    return lambda x: run(outputs, {name: x}, None)[0]
