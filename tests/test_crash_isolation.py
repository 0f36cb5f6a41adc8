"""The bad-input matrix runs in a child process: every case must end in a Python exception
(or a correct result), and the child must exit 0. A segfault fails this test instead of
killing pytest. Also: concurrent calls from several Python threads give correct results."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import torch
import torch.nn.functional as F

import miniplaces_ext as me

CHILD = textwrap.dedent(r'''
    import math, sys, torch
    import miniplaces_ext as me
    OPS = torch.ops.miniplaces_ext
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
    huge = torch.zeros(1).expand(1 << 20, 1 << 20)  # a 2^40-element view, no memory behind it
    cases = {
        "rank": lambda: me.conv2d(torch.randn(8), w),
        "dtype": lambda: me.conv2d(x, w.double()),
        "int dtype": lambda: me.conv2d(x.long(), w.long()),
        "device": lambda: me.conv2d(x, w.to("meta")),
        "channels": lambda: me.conv2d(x, torch.randn(6, 3, 3, 3)),
        "groups": lambda: me.conv2d(x, w, groups=3),
        "groups 0": lambda: me.conv2d(x, w, groups=0),
        "kernel too big": lambda: me.conv2d(x, torch.randn(6, 4, 20, 20)),
        "stride 0": lambda: OPS.conv2d_forward(x, w, None, [0, 1], [0, 0], [1, 1], 1),
        "stride huge": lambda: me.conv2d(x, w, stride=1 << 62),
        "dilation -1": lambda: OPS.conv2d_forward(x, w, None, [1, 1], [0, 0], [-1, 1], 1),
        "padding -5": lambda: OPS.conv2d_forward(x, w, None, [1, 1], [-5, 0], [1, 1], 1),
        "padding huge": lambda: me.conv2d(x, w, padding=1 << 40),
        "dilation huge": lambda: me.conv2d(x, w, dilation=1 << 40),
        "mode": lambda: me.conv2d(x, w, padding_mode="bogus"),
        "reflect too big": lambda: me.conv2d(x, w, padding=9, padding_mode="reflect"),
        "zero out channels": lambda: me.conv2d(x, torch.randn(0, 4, 3, 3)),
        "zero in channels": lambda: me.conv2d(torch.randn(2, 0, 8, 8), torch.randn(6, 0, 3, 3)),
        "zero spatial": lambda: me.conv2d(torch.randn(2, 4, 0, 8), w),
        "zero batch": lambda: me.conv2d(torch.randn(0, 4, 8, 8), w),
        "huge expanded input": lambda: me.conv2d(huge[None, None], torch.randn(1, 1, 3, 3)),
        "huge kernel view": lambda: me.conv2d(x[:, :1], huge[None, None]),
        "bias shape": lambda: me.conv2d(x, w, torch.randn(7)),
        "grad shape": lambda: OPS.conv2d_backward(torch.randn(2, 6, 3, 3), x, w, [1, 1], [0, 0], [1, 1], 1,
                                                  [True, True, True]),
        "conv1d rank": lambda: me.conv1d(x, w),
        "nan/inf values": lambda: me.conv2d(torch.full((1, 4, 8, 8), math.nan), w.clone().fill_(math.inf)),
    }
    results = {}
    for name, call in cases.items():
        try:
            out = call()
            results[name] = "ok " + str(tuple(out.shape))
        except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
            assert str(exc).strip(), name + ": empty message"
            results[name] = type(exc).__name__ + ": " + str(exc).splitlines()[0][:100]
    for name, res in results.items():
        print(f"{name}: {res}")
    print("CASES", len(results))
''')


def test_bad_input_matrix_never_crashes():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"child died with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert "CASES 26" in proc.stdout
    must_raise = ["rank", "dtype", "int dtype", "device", "channels", "groups", "groups 0", "kernel too big",
                  "stride 0", "dilation -1", "padding -5", "mode", "reflect too big", "zero out channels", "zero in channels",
                  "bias shape", "grad shape", "conv1d rank", "dilation huge", "huge kernel view"]
    for name in must_raise:
        assert not lines[name].startswith("ok"), f"{name} should raise: {lines[name]}"
    for name in ["zero batch", "nan/inf values", "stride huge"]:
        assert lines[name].startswith("ok"), f"{name}: {lines[name]}"


def test_concurrent_calls_from_threads():
    torch.manual_seed(0)
    inputs = [torch.randn(4, 16, 20, 20) for _ in range(8)]
    w = torch.randn(32, 16, 3, 3)
    # One at a time, in this thread, as the threads call it (a training forward: the algorithm
    # outside training may differ, since a kept packed weight makes Winograd pay off sooner).
    expected = [me.conv2d(x.clone().requires_grad_(), w, padding=1).detach() for x in inputs]
    for ours, x in zip(expected, inputs):  # (Winograd: ~2e-5 of max|out|, docs/winograd.md)
        torch.testing.assert_close(ours, F.conv2d(x, w, padding=1), rtol=1e-4, atol=5e-4)
    results = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                x = inputs[i].clone().requires_grad_()
                out = me.conv2d(x, w, padding=1)
                out.sum().backward()
            results[i] = out.detach()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        assert torch.equal(got, want), "concurrent calls changed the result"
