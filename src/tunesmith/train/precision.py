"""Training precision as a measured choice: fp32, bf16 autocast or (CUDA) fp16 autocast + loss scaling.

``train.precision: auto`` times a matmul in fp32 and bf16 on the training device once and checks that
bf16 autocast gives finite results close to fp32 on a small linear layer; the verdict is cached in
``$TUNESMITH_HOME/precision-probe.json`` keyed by the device (CPU model + instruction-set flags, or the
CUDA device name) and the torch version. bf16 is picked only where it is clearly faster
(:data:`MIN_SPEEDUP`). Trainable parameters and optimizer state stay fp32 in every mode: autocast
only lowers the precision of matmuls inside the forward.

Why not ``Accelerator(mixed_precision=...)``: accelerate keeps its precision in a process-wide
singleton (a second run in the same process with another precision raises), and it patches
``model.forward`` in place, so evaluation after training would also run in bf16. ``torch.autocast``
scoped to the training forward is what accelerate uses underneath, without either effect.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TunesmithError
from ..fsutil import atomic_write_json
from ..rundir import read_json

MIN_SPEEDUP = 1.3          # bf16 must beat fp32 by this factor to be chosen automatically
MAX_REL_ERR = 2e-2         # bf16 autocast vs fp32 on the numerics check (bf16 has ~3 significant digits)
PROBE_FILE = "precision-probe.json"
PROBE_VERSION = 1
ENV = "TUNESMITH_PRECISION"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    used: str                  # fp32 | bf16 | fp16
    requested: str             # auto | fp32 | bf16 | fp16
    reason: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.used]

    def autocast(self):
        """Context for the training forward and loss: autocast to bf16/fp16, or nothing for fp32."""
        if self.used == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self):
        """A loss scaler for fp16 (its gradients underflow without one); None otherwise."""
        if self.used != "fp16":
            return None
        return torch.amp.GradScaler(self.device_type)

    def as_dict(self) -> dict:
        return {"used": self.used, "requested": self.requested, "reason": self.reason}


def device_key(device: torch.device) -> str:
    """What the probe's verdict depends on: the device model (CPU model + flags) and the torch version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        ident = f"cuda:{name}:sm{cap}"
    elif device.type == "cpu":
        model, flags = _cpu_info()
        ident = f"cpu:{model}:flags-{hashlib.sha256(flags.encode()).hexdigest()[:12]}"
    else:
        ident = f"{device.type}:{platform.machine()}"
    return f"{ident}|torch-{torch.__version__}"


def _cpu_info() -> tuple[str, str]:
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return model, flags


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_matmul(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds of one ``n x n @ n x n`` matmul in ``dtype`` on ``device``."""
    n = n or (4096 if device.type == "cuda" else 1024)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    torch.mm(a, b)            # warm-up: kernel selection, allocation
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def numerics_check(device: torch.device, dtype: torch.dtype) -> float:
    """Relative error of a small linear layer's output and input gradient under autocast vs fp32
    (inf when autocast fails or gives non-finite values)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.random.fork_rng(devices=[]):     # the training run's random stream is left untouched
        layer = torch.nn.Linear(256, 256).to(device)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(256, 256, generator=g) / 16)
        layer.bias.copy_(torch.randn(256, generator=g) / 16)
    x = torch.randn(32, 256, generator=g).to(device)
    try:
        outs = []
        for ctx in (nullcontext(), torch.autocast(device_type=device.type, dtype=dtype)):
            xi = x.clone().requires_grad_(True)
            with ctx:
                y = layer(xi)
            y.float().square().mean().backward()
            outs.append((y.detach().float(), xi.grad.float()))
    except (RuntimeError, TypeError, ValueError):
        return float("inf")
    (y32, g32), (y16, g16) = outs
    if not (torch.isfinite(y16).all() and torch.isfinite(g16).all()):
        return float("inf")
    err = max(float((y16 - y32).norm() / y32.norm()), float((g16 - g32).norm() / g32.norm()))
    return err


def probe(device: torch.device, *, refresh: bool = False) -> dict:
    """The device's fp32 vs bf16 verdict, measured once and then read from the cache."""
    from ..models import home
    path = home() / PROBE_FILE
    key = device_key(device)
    cache = read_json(path) or {}
    entries = cache.get("entries") if cache.get("version") == PROBE_VERSION else None
    entries = entries if isinstance(entries, dict) else {}
    hit = entries.get(key)
    if isinstance(hit, dict) and not refresh and {"speedup", "bf16_ok"} <= hit.keys():
        return {**hit, "cached": True, "cache": str(path)}
    rel_err = numerics_check(device, torch.bfloat16)
    ok = rel_err <= MAX_REL_ERR
    n = 4096 if device.type == "cuda" else 1024
    fp32_s = time_matmul(device, torch.float32, n)
    bf16_s = time_matmul(device, torch.bfloat16, n) if ok else None
    verdict = {"n": n, "fp32_s": fp32_s, "bf16_s": bf16_s, "speedup": (fp32_s / bf16_s) if bf16_s else None,
               "bf16_ok": ok, "numerics_rel_err": rel_err if rel_err != float("inf") else None,
               "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entries[key] = verdict
    _save(path, entries)
    return {**verdict, "cached": False, "cache": str(path)}


def _save(path: Path, entries: dict) -> None:
    try:
        atomic_write_json(path, {"version": PROBE_VERSION, "entries": entries})
    except OSError:
        pass           # an unwritable cache only costs a re-measurement next time


def _where(device: torch.device) -> str:
    return "this CPU" if device.type == "cpu" else f"this {device.type.upper()} device"


def choose(requested: str, device: torch.device, field: str = "train.precision") -> Precision:
    """The precision to compute in for ``field`` (``train.precision``, ``eval.precision``) = ``requested`` on
    ``device``, and why.

    ``$TUNESMITH_PRECISION`` (fp32 | bf16 | fp16) decides what ``auto`` means without probing (e.g. a
    test suite that must compute the same on every machine); an explicit recipe value wins over it."""
    dev = device.type
    pinned = os.environ.get(ENV, "").strip().lower()
    if requested == "auto" and pinned and pinned != "auto":
        if pinned not in DTYPES:
            raise TunesmithError(f"{ENV}={pinned!r} is not a precision; expected auto, fp32, bf16 or fp16",
                                 field=ENV)
        chosen = choose(pinned, device, field)
        return Precision(chosen.used, requested, f"{ENV}={pinned} in the environment", dev)
    if requested == "fp32":
        return Precision("fp32", requested, "requested", dev)
    if requested == "fp16":
        if dev != "cuda":
            raise TunesmithError(f"{field} fp16 needs a CUDA GPU (this is on {dev}); use bf16 or auto", field=field)
        return Precision("fp16", requested, "requested (fp16 autocast with loss scaling)", dev)
    if requested == "bf16":
        if dev == "cuda" and not torch.cuda.is_bf16_supported():
            raise TunesmithError(f"{field} bf16: {torch.cuda.get_device_name(device)} has no bf16 "
                                 f"support; use fp32, fp16 or auto", field=field)
        return Precision("bf16", requested, "requested", dev)
    if requested != "auto":
        raise TunesmithError(f"unknown {field} {requested!r}; expected auto, fp32, bf16 or fp16", field=field)
    v = probe(device)
    source = f"probe cached in {v['cache']}" if v["cached"] else f"probed now, cached in {v['cache']}"
    if not v["bf16_ok"]:
        err = v.get("numerics_rel_err")
        why = "failed" if err is None else f"relative error {err:.2g} > {MAX_REL_ERR}"
        return Precision("fp32", requested, f"bf16 autocast numerics check {why} on {_where(device)} ({source})", dev)
    speedup = v["speedup"]
    if speedup >= MIN_SPEEDUP:
        return Precision("bf16", requested, f"bf16 matmul {speedup:.1f}x fp32 on {_where(device)} ({source})", dev)
    return Precision("fp32", requested, f"bf16 matmul only {speedup:.2f}x fp32 on {_where(device)}, below the "
                                        f"{MIN_SPEEDUP}x needed ({source})", dev)


def peak_gflops(v: dict) -> dict:
    """fp32 and bf16 matmul GFLOP/s from a probe verdict (for reports and the bench)."""
    flops = 2 * int(v.get("n") or 1024) ** 3
    return {"fp32": flops / v["fp32_s"] / 1e9 if v.get("fp32_s") else None,
            "bf16": flops / v["bf16_s"] / 1e9 if v.get("bf16_s") else None}


__all__ = ["Precision", "choose", "probe", "device_key", "time_matmul", "numerics_check", "peak_gflops",
           "MIN_SPEEDUP"]
