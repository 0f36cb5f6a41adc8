"""Our CUDA kernels, executed on the CPU by the harness in testing/cuda_on_cpu/.

The same source nvcc compiles (csrc/cuda/*.cuh, launched by conv_ops.cuh) is
compiled as host C++ and run thread by thread with real __syncthreads semantics, every
buffer behind a guard page and every output pre-filled with NaN. Each configuration runs
under several thread orders (a race shows up as a difference between them) and is compared
with float64 torch.nn.functional within a bound derived from the reduction length and the
dtype's epsilon (so a half-precision accumulator would fail). Runs on CPU-only machines.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import miniplaces_ext  # noqa: F401  (loads the ops)
from cuda_on_cpu_harness import load_harness
from conftest import LAYOUTS, assert_within_accumulation_bound, conv_reference_with_bounds

OPS = load_harness()
ORDERS = ["forward", "reverse", "random"]
KERNELS = {"implicit_gemm<forward,simt,cp.async>", "implicit_gemm<grad_input,simt,cp.async>",
           "implicit_gemm<grad_weight,simt,cp.async>", "sum_splits", "bias_grad"}
TF32_ROUNDING = 2.0**-11  # relative error of rounding float32 to TF32's 10 mantissa bits

CASES = [
    # (N, C, H, W, Cout, (kh, kw), stride, padding, dilation, groups)
    (2, 3, 9, 7, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 6, 8, 8, 12, (3, 3), (2, 2), (1, 1), (1, 1), 3),       # strided, grouped
    (1, 8, 7, 9, 8, (5, 5), (1, 1), (2, 2), (1, 1), 8),        # depthwise
    (3, 4, 10, 10, 16, (1, 1), (2, 2), (0, 0), (1, 1), 1),     # 1x1 stride 2
    (2, 3, 17, 17, 8, (7, 7), (2, 2), (3, 3), (1, 1), 1),      # stem-like
    (2, 3, 23, 23, 8, (11, 11), (4, 4), (2, 2), (1, 1), 1),    # AlexNet-like
    (2, 4, 10, 9, 6, (2, 4), (1, 2), (1, 2), (2, 1), 2),       # asymmetric everything
    (1, 20, 6, 5, 70, (3, 3), (1, 1), (1, 1), (1, 1), 1),      # K = 180 (12 k-tiles), 70 cols (2 column tiles)
    (2, 5, 9, 8, 4, (3, 3), (1, 1), (0, 0), (2, 2), 1),        # dilation without padding
    (2, 3, 9, 10, 4, (3, 3), (2, 2), (2, 1), (2, 2), 1),       # stride 2 x dilation 2: odd phases read by no tap
]
SPLIT_K_CASE = (3, 2, 20, 20, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1)  # 1,200 pixels: 2 split-K chunks

@pytest.fixture(autouse=True)
def _default_harness():
    OPS.configure("forward", 0, "after")
    OPS.launches()
    yield
    OPS.configure("forward", 0, "after")


def _inputs(case, dtype, layout, seed=0):
    n, c, h, w, cout, k, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    weight = torch.randn(cout, c // groups, *k, generator=g).to(dtype)
    bias = torch.randn(cout, generator=g).to(dtype)
    x_ref = x.double()
    out_shape = F.conv2d(x_ref, weight.double(), None, stride, padding, dilation, groups).shape
    dy = torch.randn(out_shape, generator=g).to(dtype)
    if layout == "channels_last":  # as a model converted with .to(memory_format=torch.channels_last) has them
        x, dy, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy, weight))
    return x, weight, bias, dy


def _harness(x, weight, bias, dy, case):
    *_, stride, padding, dilation, groups = case
    conf = (list(stride), list(padding), list(dilation), groups)
    out = OPS.conv2d_forward(x, weight, bias, *conf)
    grads = OPS.conv2d_backward(dy, x, weight, *conf, [True, True, True])
    return (out, *grads)


def _check_case(case, dtype, layout, order, guard="after", max_grid_z=65535, capability=90, operand_rounding=0.0):
    OPS.configure(order, 1234, guard, max_grid_z, capability)
    x, weight, bias, dy = _inputs(case, dtype, layout)
    got = _harness(x, weight, bias, dy, case)
    *_, stride, padding, dilation, groups = case
    ref, abs_ref, lengths = conv_reference_with_bounds(x, weight, bias, dy, stride, padding, dilation, groups)
    names = ("output", "grad_input", "grad_weight", "grad_bias")
    for name, g, r, a, k in zip(names, got, ref, abs_ref, lengths):
        assert g.dtype == dtype and g.shape == r.shape, name
        assert not g.isnan().any(), f"{name}: elements no kernel wrote (NaN poison left)"
        assert_within_accumulation_bound(g, r, a, k, name, operand_rounding)
    expect_cl = layout == "channels_last" and x.shape[1] > 1 and not x.is_contiguous()
    assert got[0].is_contiguous(memory_format=torch.channels_last if expect_cl else torch.contiguous_format)
    assert got[1].is_contiguous(memory_format=torch.channels_last if expect_cl else torch.contiguous_format)
    return got


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-k{c[5][0]}{c[5][1]}-g{c[9]}")
def test_float32_every_thread_order_same_bits(case):
    """Correct under each thread order, and bit-identical across them (no race)."""
    results = [_check_case(case, torch.float32, "contiguous", order) for order in ORDERS]
    for order, other in zip(ORDERS[1:], results[1:]):
        for name, a, b in zip(("output", "grad_input", "grad_weight", "grad_bias"), results[0], other):
            assert torch.equal(a, b), f"{name} differs between thread orders forward and {order}: a race"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES[:8], ids=lambda c: "x".join(map(str, c[:5])) + f"-k{c[5][0]}{c[5][1]}")
def test_other_dtypes(case, dtype):
    """fp64 on CUDA cores through cp.async stages; fp16 and bf16 on tensor cores (WMMA),
    accumulated in fp32, staged through registers (cp.async copies 4, 8 or 16 bytes)."""
    _check_case(case, dtype, "contiguous", "random")
    kernel = "simt,cp.async" if dtype == torch.float64 else "wmma,registers"
    assert {n for n in OPS.launches() if n.startswith("implicit_gemm")} == {
        f"implicit_gemm<{p},{kernel}>" for p in ("forward", "grad_input", "grad_weight")}


@pytest.mark.parametrize("case", [CASES[0], CASES[7]], ids=["3x3", "12-k-tiles"])
def test_tensor_cores_every_thread_order_same_bits(case):
    """The WMMA path (fragments through shared memory, epilogue barrier) has no race either."""
    results = [_check_case(case, torch.float16, "contiguous", order) for order in ORDERS]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("capability, dtype, mma", [(75, torch.float16, "wmma,registers"),
                                                    (75, torch.bfloat16, "simt,registers"),
                                                    (80, torch.bfloat16, "wmma,registers"),
                                                    (75, torch.float32, "simt,cp.async")])
def test_tensor_cores_only_where_the_gpu_has_them(capability, dtype, mma):
    """bf16 and TF32 tensor cores exist from sm_80, fp16 from sm_70: older GPUs run the SIMT kernel."""
    torch.backends.cudnn.allow_tf32 = True
    try:
        _check_case(CASES[1], dtype, "contiguous", "forward", capability=capability,
                    operand_rounding=TF32_ROUNDING if mma.startswith("wmma") and dtype == torch.float32 else 0.0)
    finally:
        torch.backends.cudnn.allow_tf32 = False
    assert f"implicit_gemm<forward,{mma}>" in OPS.launches()


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[7]], ids=["3x3", "stem", "12-k-tiles"])
def test_float32_as_tf32_when_allowed(case):
    """torch.backends.cudnn.allow_tf32 on: fp32 runs on TF32 tensor cores, within TF32's operand
    rounding of the exact result but not exact; off: the exact SIMT kernel."""
    torch.backends.cudnn.allow_tf32 = True
    try:
        tf32 = _check_case(case, torch.float32, "contiguous", "random", operand_rounding=TF32_ROUNDING)
    finally:
        torch.backends.cudnn.allow_tf32 = False
    assert "implicit_gemm<forward,wmma,cp.async>" in OPS.launches()
    exact = _check_case(case, torch.float32, "contiguous", "random")
    assert "implicit_gemm<forward,simt,cp.async>" in OPS.launches()
    assert not torch.equal(tf32[0], exact[0])  # the operands really were rounded


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[6]], ids=["3x3", "stride2-groups", "asymmetric"])
def test_channels_last(case, dtype):
    _check_case(case, dtype, "channels_last", "random")


VECTOR_CASES = [
    (2, 8, 9, 7, 12, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # two vectors of channels per tap
    (2, 16, 8, 9, 12, (3, 3), (2, 2), (1, 1), (1, 1), 2),    # stride 2, two groups of 8 channels
    (1, 12, 7, 9, 70, (5, 3), (1, 2), (2, 1), (2, 1), 1),    # K = 180 (12 k-tiles), 2 column tiles, asymmetric
]


@pytest.mark.parametrize("dtype, mma", [(torch.float32, "simt"), (torch.float64, "simt"), (torch.float16, "wmma"),
                                        (torch.bfloat16, "wmma")])
@pytest.mark.parametrize("case", VECTOR_CASES, ids=["3x3", "stride2-groups", "asymmetric"])
def test_forward_vector_loads_on_channels_last(case, dtype, mma):
    """Channels_last input and weight, channels per group a multiple of 4: the forward pass walks
    k = (i, j, c) and reads each thread's 4 consecutive channels with one vector load per operand
    (16 bytes fp32, 8 fp16/bf16, 2 x 16 fp64); correct and the same bits under every thread order."""
    results = [_check_case(case, dtype, "channels_last", order) for order in ORDERS]
    assert f"implicit_gemm<forward,{mma},vector-loads>" in OPS.launches()
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0])


def test_forward_vector_loads_with_tf32():
    torch.backends.cudnn.allow_tf32 = True
    try:
        _check_case(VECTOR_CASES[2], torch.float32, "channels_last", "random", operand_rounding=TF32_ROUNDING)
    finally:
        torch.backends.cudnn.allow_tf32 = False
    assert "implicit_gemm<forward,wmma,vector-loads>" in OPS.launches()


@pytest.mark.parametrize("change", ["nchw_input", "oihw_weight", "6_channels", "odd_storage_offset"])
def test_vector_loads_only_where_every_vector_is_aligned(change):
    """Anything that leaves a thread's 4 channels non-adjacent or unaligned takes the scalar main loop."""
    case = VECTOR_CASES[0]
    if change == "6_channels":
        case = (2, 6, *case[2:])
    x, weight, bias, _ = _inputs(case, torch.float32, "channels_last")
    if change == "nchw_input":
        x = x.contiguous()
    elif change == "oihw_weight":
        weight = weight.contiguous()
    elif change == "odd_storage_offset":  # a view one element into its storage
        storage = torch.empty(x.numel() + 1)
        x = storage[1:].as_strided(x.shape, x.stride()).copy_(x)
    *_, stride, padding, dilation, groups = case
    OPS.configure("random", 1234, "after")
    out = OPS.conv2d_forward(x, weight, bias, list(stride), list(padding), list(dilation), groups)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, stride, padding, dilation, groups), rtol=1e-5, atol=1e-5)
    assert OPS.launches() == ["implicit_gemm<forward,simt,cp.async>"]


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[6]], ids=["3x3", "stem", "asymmetric"])
def test_guard_before_the_buffers(case):
    """Guard pages before each buffer: any read or write below an operand's first element faults."""
    _check_case(case, torch.float32, "contiguous", "forward", guard="before")


def test_split_k_reduction_is_exact_and_deterministic():
    """grad_weight over 1,200 pixels runs as 2 split-K chunks summed by sum_splits, same bits every order."""
    results = [_check_case(SPLIT_K_CASE, torch.float32, "contiguous", order) for order in ORDERS]
    for other in results[1:]:
        assert torch.equal(results[0][2], other[2])


def test_every_kernel_is_executed():
    _check_case(SPLIT_K_CASE, torch.float32, "contiguous", "forward")
    launched = OPS.launches()
    assert set(launched) == KERNELS
    assert launched.count("implicit_gemm<grad_weight,simt,cp.async>") == 1  # one launch, both chunks on blockIdx.z


@pytest.mark.parametrize("case, phases", [(CASES[0], 1), (CASES[1], 4), (CASES[5], 16), (CASES[6], 2), (CASES[3], 1),
                                          (CASES[9], 1)],
                         ids=["stride1", "stride2", "stride4", "stride1x2", "1x1-stride2", "stride2-dilation2"])
def test_strided_grad_input_runs_one_sub_convolution_per_phase(case, phases):
    """grad_input at stride (sh, sw) is one GEMM per phase some tap reaches, each over those taps only;
    the pixels no tap reaches (1x1 stride 2: three in four) are zeros."""
    _check_case(case, torch.float32, "contiguous", "random")
    assert OPS.launches().count("implicit_gemm<grad_input,simt,cp.async>") == phases


def test_more_groups_than_one_launch_takes():
    """groups x split-K chunks above the grid's z limit run as several launches (limit lowered to 2)."""
    case = (2, 10, 20, 20, 5, (3, 3), (1, 1), (1, 1), (1, 1), 5)  # 5 groups; grad_weight: 5 x 1 split
    _check_case(case, torch.float32, "contiguous", "random", max_grid_z=2)
    assert OPS.launches().count("implicit_gemm<forward,simt,cp.async>") == 3
    _check_case(SPLIT_K_CASE, torch.float32, "contiguous", "forward", max_grid_z=1)
    assert OPS.launches().count("implicit_gemm<grad_weight,simt,cp.async>") == 2


FUZZ_EXAMPLES = int(os.environ.get("MINIPLACES_FUZZ_EXAMPLES", "100"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_against_torch(data):
    """Random valid configurations (deep run: MINIPLACES_FUZZ_EXAMPLES=1000)."""
    groups = data.draw(st.sampled_from([1, 2, 3]))
    kernel = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)))
    dilation = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    padding = (data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3)))
    extent = [d * (k - 1) + 1 - 2 * p for k, d, p in zip(kernel, dilation, padding)]
    h, w = (data.draw(st.integers(max(1, e), max(1, e) + 9)) for e in extent)
    case = (data.draw(st.integers(1, 3)), groups * data.draw(st.integers(1, 4)), h, w,
            groups * data.draw(st.integers(1, 6)), kernel, (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))),
            padding, dilation, groups)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    layout = data.draw(st.sampled_from(["contiguous", "channels_last"]))
    _check_case(case, dtype, layout, data.draw(st.sampled_from(ORDERS)), data.draw(st.sampled_from(["after", "before"])))


def _memory_available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


@pytest.mark.slow
def test_element_offsets_beyond_int32():
    """Index maths is 64-bit: a float16 input of 2**31 + 65,536 elements whose far corners a 1x1
    convolution of stride 32767 reads (offsets up to 2,147,549,182); forward, grad_weight, grad_bias."""
    if _memory_available_gib() < 14:
        pytest.skip("needs 14 GiB of free memory (a 4 GiB input and the harness's guarded copy)")
    x = torch.zeros(1, 2, 32768, 32769, dtype=torch.float16)
    assert x.numel() > 2**31
    rows = cols = (0, 32767)
    for value, (c, h, w) in enumerate([(c, h, w) for c in (0, 1) for h in rows for w in cols], start=1):
        x[0, c, h, w] = value
    corners = x[0][:, list(rows)][:, :, list(cols)].double()  # (c, 2, 2)
    weight = torch.tensor([2.0, -3.0], dtype=torch.float16).view(1, 2, 1, 1)
    bias = torch.tensor([0.5], dtype=torch.float16)
    conf = ([32767, 32767], [0, 0], [1, 1], 1)
    out = OPS.conv2d_forward(x, weight, bias, *conf)
    assert torch.equal(out.double()[0, 0], 2 * corners[0] - 3 * corners[1] + 0.5)
    dy = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float16).view(1, 1, 2, 2)
    _, dw, db = OPS.conv2d_backward(dy, x, weight, *conf, [False, True, True])
    del x
    assert torch.equal(dw.double().view(2), (corners * dy.double()[0, 0]).sum((1, 2)))
    assert db.item() == 10.0


def test_empty_batch():
    case = (0, 4, 6, 6, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    x, weight, bias, dy = _inputs(case, torch.float32, "contiguous")
    out, dx, dw, db = _harness(x, weight, bias, dy, case)
    assert out.shape == (0, 8, 6, 6) and dx.shape == x.shape
    assert torch.equal(dw, torch.zeros_like(weight)) and torch.equal(db, torch.zeros_like(bias))


# The harness itself: kernels with deliberate bugs (testing/cuda_on_cpu/harness_selftest.cpp).

def test_harness_runs_a_correct_shared_memory_kernel():
    x = torch.randn(64)
    for order in ORDERS:
        assert torch.equal(OPS.selftest("rotate", x, order), x.roll(-1))


def test_harness_exposes_a_missing_barrier():
    """Without __syncthreads the result depends on the thread order: a race the harness makes visible."""
    x1, x2 = torch.randn(64), torch.randn(64)
    reverse = OPS.selftest("rotate_without_barrier", x1, "reverse")
    forward = OPS.selftest("rotate_without_barrier", x2, "forward")
    # reverse: each thread's neighbour wrote before it read (but the last one);
    # forward: each thread read before its neighbour wrote, i.e. the previous launch's data
    assert torch.equal(reverse[:-1], x1.roll(-1)[:-1])
    assert torch.equal(forward[:-1], x1.roll(-1)[:-1]) and not torch.equal(forward, x2.roll(-1))


def test_harness_catches_out_of_bounds_reads():
    with pytest.raises(RuntimeError, match="0 bytes past the end of a 256-byte buffer.*thread 63"):
        OPS.selftest("read_past_end", torch.randn(64), "forward")


def test_harness_catches_barrier_divergence():
    with pytest.raises(RuntimeError, match="barrier divergence"):
        OPS.selftest("divergent_barrier", torch.randn(64), "random")


def test_harness_catches_wmma_misuse():
    """WMMA operations are warp-collective and need 32-byte aligned pointers, as on a GPU."""
    with pytest.raises(RuntimeError, match="lane 16 of warp 0 performed 0 warp-collective"):
        OPS.selftest("divergent_wmma", torch.randn(32), "forward")
    with pytest.raises(RuntimeError, match="store_matrix_sync: pointer not 32-byte aligned"):
        OPS.selftest("misaligned_wmma", torch.randn(32), "forward")


def test_harness_emulates_cp_async():
    """cp.async copies land when waited for, not before; unwaited or misaligned copies are errors."""
    x = torch.randn(64)
    assert torch.equal(OPS.selftest("async_copy", x, "random"), x)
    with pytest.raises(RuntimeError, match="returned with cp.async copies never waited for"):
        OPS.selftest("async_copy_without_wait", x, "forward")
    with pytest.raises(RuntimeError, match="cp.async of 8 bytes from or to an address not aligned"):
        OPS.selftest("misaligned_async_copy", x, "forward")


def test_harness_checks_vector_load_alignment():
    """16-byte vector loads (__ldg of uint4) read four elements; a misaligned one is an error, as on a GPU."""
    x = torch.randn(64)
    assert torch.equal(OPS.selftest("vector_loads", x, "random"), x)
    with pytest.raises(RuntimeError, match="__ldg of 16 bytes from an address not aligned to its size"):
        OPS.selftest("misaligned_vector_loads", x, "forward")


def test_harness_checks_launch_settings():
    with pytest.raises(RuntimeError, match="thread order must be"):
        OPS.configure("sideways", 0, "after")
    with pytest.raises(RuntimeError, match="guard must be"):
        OPS.configure("forward", 0, "middle")
    with pytest.raises(RuntimeError, match="max_grid_z must be"):
        OPS.configure("forward", 0, "after", 0)


# conv2d_fused on CUDA: bias, residual and ReLU in the implicit GEMM's store (ForwardProblem::store).
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3], CASES[7]])
@pytest.mark.parametrize("residual_layout", list(LAYOUTS))
@pytest.mark.parametrize("relu", [True, False])
def test_fused_epilogue_float32_is_conv_add_relu(case, residual_layout, relu):
    """float32 (CUDA cores, TF32 off): the store adds the bias, then the residual, then ReLUs, as
    the unfused ops do in float32: the same bits, under every thread order, NaN poison included."""
    *_, stride, padding, dilation, groups = case
    conf = (list(stride), list(padding), list(dilation), groups)
    x, weight, bias, dy = _inputs(case, torch.float32, "contiguous")
    residual = LAYOUTS[residual_layout](torch.randn(dy.shape, generator=torch.Generator().manual_seed(5)))
    for order in ORDERS:
        OPS.configure(order, 1234, "after")
        OPS.launches()
        fused = OPS.conv2d_fused(x, weight, bias, residual, relu, *conf)
        assert OPS.launches() == ["implicit_gemm<forward,simt,cp.async>"]  # one kernel: no pass afterwards
        expected = OPS.conv2d_forward(x, weight, bias, *conf) + residual
        assert torch.equal(fused, expected.relu() if relu else expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("residual_layout", ["nchw", "channels_last"])
def test_fused_epilogue_rounds_once_on_tensor_cores(dtype, residual_layout):
    """float16 / bfloat16 on tensor cores: small integer operands make the float32 accumulator
    exact, so the output must be the exact conv + bias + residual, ReLU'd, rounded once (two
    roundings, conv then add, would differ on some elements)."""
    g = torch.Generator().manual_seed(7)
    top = 32 if dtype == torch.float16 else 8  # sums beyond float16's 11 (bfloat16's 8) significant bits
    x = torch.randint(-top, top + 1, (2, 32, 10, 10), generator=g).to(dtype)
    weight = torch.randint(-top, top + 1, (32, 32, 3, 3), generator=g).to(dtype)
    bias = torch.randint(-64, 65, (32,), generator=g).to(dtype)
    conv = F.conv2d(x.double(), weight.double(), bias.double(), 1, 1)
    residual = LAYOUTS[residual_layout](torch.randint(-300, 301, conv.shape, generator=g).to(dtype))
    exact = (conv + residual.double()).relu()
    once = exact.float().to(dtype)
    twice = (conv.float().to(dtype).float() + residual.float()).relu().to(dtype)
    assert not torch.equal(once, twice)  # the case tells one rounding from two
    fused = OPS.conv2d_fused(x, weight, bias, residual, True, [1, 1], [1, 1], [1, 1], 1)
    assert "wmma" in OPS.launches()[0]
    assert torch.equal(fused, once)
