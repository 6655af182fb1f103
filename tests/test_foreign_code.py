"""Code graphcap did not write: every way a foreign forward broke the "no silent wrong answers" promise.

Functions and models written the way other people write them: tensors in
tuples (the legacy ``past_key_values``), lists, dicts, dataclasses and cache
objects; results as namedtuples, ``ModelOutput`` objects and dataclasses;
Layers with parameters, closures, default arguments; a PaddleFormers
``LlamaForCausalLM``. Every graphed result is compared with calling the
function directly on the same inputs, bit for bit, on the ``eager`` and
``static`` backends.

=====================================================  ==============================================
finding                                                tests
=====================================================  ==============================================
a tuple argument hashed into the key: a graph per call test_tuple_argument_shares_one_graph_per_bucket
a list argument raised "not hashable"                  test_containers_and_objects_are_argument_trees,
                                                       test_unhashable_leaf_names_its_path,
                                                       test_structure_never_raises_for_an_eager_batch
namedtuple / ModelOutput results came back broken      test_outputs_keep_their_type
classification frozen by the first call                test_classification_follows_each_calls_shapes,
                                                       test_argument_order_never_matters,
                                                       test_role_overrides_by_path
state frozen into the graph with no error              test_python_held_state_raises_at_capture,
                                                       test_undeclared_counter_argument_raises_and_is_restored,
                                                       test_host_read_of_state_raises_inside_allow_host_reads,
                                                       test_writing_a_batched_argument_raises,
                                                       test_a_graph_whose_state_writes_differ_from_eager_is_refused
rebinding what the graph reads, not handed to it       test_layer_parameter_rebound_by_a_weight_reload,
                                                       test_cache_tensor_reallocated_inside_an_argument_object,
                                                       test_in_place_reallocation_of_a_parameter,
                                                       test_static_program_reads_only_what_the_scan_names
capture failures: permanent, silent, unexplained       test_capture_failure_names_its_root_cause,
                                                       test_capture_failure_can_be_fatal,
                                                       test_paddleformers_llama_out_of_the_box
static backend recompiled functions from source        test_functions_as_python_defines_them
=====================================================  ==============================================
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging

import attrs
import numpy as np
import paddle
import pytest
from conftest import paddleformers_transformers

from graphcap import (
    AddressStabilityError,
    CaptureError,
    CaptureRegistry,
    CaptureSafetyError,
    GraphConfig,
    allow_host_reads,
)
from graphcap.execute.backends.eager import EagerBackend

BACKENDS = ["eager", "static"]


def registry(backend: str, **overrides) -> CaptureRegistry:
    options = {"use_graph": True, "backend": backend, "capture_sizes": (2, 4)} | overrides
    return CaptureRegistry(GraphConfig(**options))


def assert_same(got, want):
    """Same container types all the way down, tensors equal bit for bit."""
    assert type(got) is type(want), f"{type(got).__name__} is not {type(want).__name__}"
    if isinstance(want, paddle.Tensor):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    elif isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_same(a, b)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif dataclasses.is_dataclass(want):
        for field in dataclasses.fields(want):
            assert_same(getattr(got, field.name), getattr(want, field.name))
    else:
        assert got == want


def rows(n: int, width: int = 3) -> paddle.Tensor:
    return paddle.randn([n, width])


# 1. Arguments are pytrees --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_tuple_argument_shares_one_graph_per_bucket(backend):
    reg = registry(backend)

    def step(*, x, past_key_values):
        (k0, v0), (k1, v1) = past_key_values
        return x * 2 + k0 - v0 + k1 * v1

    graphed = reg.graphed("legacy", batch_arg="x")(step)
    for _ in range(5):
        pkv = tuple((rows(3), rows(3)) for _ in range(2))  # fresh tensors every call, like a real engine
        x = rows(3)
        assert_same(graphed(x=x, past_key_values=pkv), step(x=x, past_key_values=pkv))
    stats = reg.stats()
    assert stats["captures"] == 1 and stats["graphs"] == 1 and stats["replays"] == 5


@dataclasses.dataclass
class ForwardMeta:
    """A FastDeploy-style metadata object: batched and static tensors and plain values."""

    seq_lens: paddle.Tensor
    scale: paddle.Tensor
    causal: bool = True


class KVCache:
    """A cache held in an object, as model libraries write them."""

    def __init__(self, keys: list[paddle.Tensor]) -> None:
        self.keys = keys
        self.layers = len(keys)


@pytest.mark.parametrize("backend", BACKENDS)
def test_containers_and_objects_are_argument_trees(backend):
    reg = registry(backend)
    cache = KVCache([paddle.randn([8, 3]), paddle.randn([8, 3])])  # 8 slots: static, not batched
    scale = paddle.to_tensor([2.0])

    def step(*, x, extra, inputs, meta, cache):
        h = x + extra[0] * extra[1] + inputs["mask"] * meta.seq_lens.unsqueeze(-1).astype("float32")
        if meta.causal:
            h = h * meta.scale
        return h + cache.keys[0][:1] - cache.keys[1][1:2] * cache.layers

    graphed = reg.graphed("tree", batch_arg="x")(step)
    for n in (3, 4, 2, 3):
        args = dict(
            x=rows(n), extra=[rows(n), rows(n)], inputs={"mask": rows(n)},
            meta=ForwardMeta(seq_lens=paddle.arange(n), scale=scale), cache=cache,
        )
        assert_same(graphed(**args), step(**args))
    assert reg.stats()["graphs"] == 2 and reg.stats()["captures"] == 2
    # Where each leaf went: batched leaves got staging buffers by path, static ones none.
    assert {"x", "extra[0]", "extra[1]", "inputs['mask']", "meta.seq_lens"} <= set(graphed.staging)
    assert "meta.scale" not in graphed.staging and "cache.keys[0]" not in graphed.staging


@pytest.mark.parametrize("backend", BACKENDS)
def test_unhashable_leaf_names_its_path(backend):
    reg = registry(backend)
    graphed = reg.graphed("t", batch_arg="x")(lambda x, kv: x + kv[0])
    with pytest.raises(CaptureError, match=r"argument 'kv\[1\]' of type ndarray is not hashable.*pass it as a tensor"):
        graphed(x=rows(3), kv=(rows(3), np.ones(3)))
    assert reg.stats()["captures"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_structure_never_raises_for_an_eager_batch(backend):
    reg = registry(backend)

    def step(x, kv):
        return x + kv[0] + float(kv[1].sum())

    graphed = reg.graphed("t", batch_arg="x")(step)
    kv = [rows(7), np.ones(3)]  # a list with an unhashable leaf, 7 rows > the largest bucket 4
    x = rows(7)
    assert_same(graphed(x, kv), step(x, kv))
    stats = reg.stats()
    assert stats["eager_fallbacks"] == 1 and stats["captures"] == 0
    assert stats["fallbacks"] == [
        {"graph": "t", "bucket": None, "reason": "more rows than the largest capture size 4", "calls": 1}
    ]


# 2. Outputs keep their type ------------------------------------------------------------

Pair = collections.namedtuple("Pair", "logits hidden")


@dataclasses.dataclass
class StepOutput:
    logits: paddle.Tensor
    hidden: paddle.Tensor
    note: str = "done"


def output_kinds():
    yield "namedtuple", lambda a, b: Pair(a, b)
    yield "ordered_dict", lambda a, b: collections.OrderedDict([("logits", a), ("hidden", b)])
    yield "dataclass", lambda a, b: StepOutput(a, b)
    yield "list_with_constant", lambda a, b: [a, (b, None), 7]
    yield "nested_dict", lambda a, b: {"out": {"logits": a}, "hidden": [b]}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", [name for name, _ in output_kinds()])
def test_outputs_keep_their_type(backend, kind):
    build = dict(output_kinds())[kind]
    reg = registry(backend)
    w = paddle.randn([3, 3])

    def step(*, x):
        return build(paddle.matmul(x, w), x * 2)

    graphed = reg.graphed("t", batch_arg="x")(step)
    for n in (4, 3):
        x = rows(n)
        assert_same(graphed(x=x), step(x=x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_output_keeps_its_type(backend):
    outputs = paddleformers_transformers().model_outputs
    reg = registry(backend)

    def step(*, x):
        return outputs.CausalLMOutputWithPast(logits=x * 3)

    graphed = reg.graphed("t", batch_arg="x")(step)
    x = rows(3)
    got = graphed(x=x)
    assert_same(got, step(x=x))
    np.testing.assert_array_equal(got.logits.numpy(), (x * 3).numpy())  # attribute access works
    assert got.loss is None and list(got.keys()) == ["logits"]


# 3. Classification follows each call -----------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_classification_follows_each_calls_shapes(backend):
    reg = registry(backend, capture_sizes=(1, 2, 4))
    bias = paddle.randn([1, 3])

    def step(*, x, bias):
        return x + bias

    graphed = reg.graphed("t", batch_arg="x")(step)
    for n in (1, 4, 1, 3):  # batch 1 makes the [1, 3] bias look batched; batch 4 must not be refused
        x = rows(n)
        assert_same(graphed(x=x, bias=bias), step(x=x, bias=bias))
    # Bucket 1 with the bias batched, bucket 4 with it static; rows 3 reuse bucket 4's graph.
    assert reg.stats()["graphs"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_argument_order_never_matters(backend):
    reg = registry(backend)
    w = paddle.randn([3, 3])

    def step(x, w, *, shift=1.0):
        return paddle.matmul(x, w) + shift

    graphed = reg.graphed("t", batch_arg="x")(step)
    x = rows(2)  # not 3 rows: a [3, 3] weight would then look batched (name it in static_args)
    want = step(x, w, shift=2.0)
    assert_same(graphed(x, w, shift=2.0), want)
    assert_same(graphed(w=w, x=x, shift=2.0), want)
    assert_same(graphed(shift=2.0, x=x, w=w), want)
    assert reg.stats()["graphs"] == 1 and reg.stats()["replays"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_role_overrides_by_path(backend):
    reg = registry(backend)

    def step(*, x, state):
        return x + state["table"].sum() + state["rows"]

    graphed = reg.graphed("t", batch_arg="x", static_args=["state['table']"])(step)
    table = paddle.randn([4, 3])  # 4 rows, like a batch of 4, but a table
    for n in (4, 3):
        state = {"table": table, "rows": rows(n)}
        x = rows(n)
        assert_same(graphed(x=x, state=state), step(x=x, state=state))
    assert "state['table']" not in graphed.staging and "state['rows']" in graphed.staging
    with pytest.raises(CaptureError, match="both static_args and batched_args"):
        reg.graphed("u", batch_arg="x", static_args=["state"], batched_args=["state"])(step)


# 4. State of its own is caught at capture ------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_python_held_state_raises_at_capture(backend):
    reg = registry(backend)
    held = {"past": paddle.zeros([4, 3])}

    def step(*, x):
        # DynamicCache-style: the cache is replaced by a new tensor every call.
        held["past"] = held["past"] + x
        return held["past"] * 1.0

    graphed = reg.graphed("t", batch_arg="x")(step)
    with pytest.raises(CaptureSafetyError, match=r"rebinds held\['past'\] on every call"):
        graphed(x=rows(4))
    assert held["past"].numpy().sum() == 0  # put back as it was before the warmups


@pytest.mark.parametrize("backend", BACKENDS)
def test_undeclared_counter_argument_raises_and_is_restored(backend):
    reg = registry(backend)
    counter = paddle.to_tensor([5.0])

    def step(*, x, counter):
        paddle.assign(counter + 1, output=counter)
        return x * counter

    graphed = reg.graphed("t", batch_arg="x")(step)
    with pytest.raises(CaptureSafetyError, match="changed its static argument 'counter' in place"):
        graphed(x=rows(3), counter=counter)
    assert counter.numpy().tolist() == [5.0]  # the warmups' advances were put back


@pytest.mark.parametrize("backend", BACKENDS)
def test_host_read_of_state_raises_inside_allow_host_reads(backend):
    reg = registry(backend)
    counter = paddle.to_tensor([1.0])

    def step(*, x):
        with allow_host_reads(reason="a step counter read on the host"):
            step_number = float(counter.item())
        paddle.assign(counter + 1, output=counter)
        return x * step_number

    graphed = reg.graphed("t", batch_arg="x")(step)
    with pytest.raises(CaptureSafetyError, match="changed counter in place between two runs"):
        graphed(x=rows(3))
    assert counter.numpy().tolist() == [1.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_writing_a_batched_argument_raises(backend):
    reg = registry(backend)

    def step(*, x, out):
        paddle.assign(x * 2, output=out)  # writes the caller's tensor: a staged copy would swallow it
        return x

    graphed = reg.graphed("t", batch_arg="x")(step)
    with pytest.raises(CaptureSafetyError, match="writes into its batched argument 'out'"):
        graphed(x=rows(3), out=paddle.zeros([3, 3]))


def test_a_graph_whose_state_writes_differ_from_eager_is_refused():
    # to_static rounds Python int constants near 2^63, so this modular seed advance is
    # right eagerly and wrong in the trace; the outputs agree, only the state write differs.
    reg = registry("static", capture_sizes=(4,))
    seed = reg.buffers.declare("infer_seed", [4], "int64", pad="keep")
    seed[:] = 1000
    limit = 9223372036854775806 - 4

    def step(*, x):
        s = reg.buffers.infer_seed
        paddle.assign(paddle.where(s >= limit, s - limit, s + 4), output=s)
        return x * 2

    graphed = reg.graphed("t", batch_arg="x")(step)
    x = rows(4)
    assert_same(graphed(x=x), x * 2)
    assert seed.numpy().tolist() == [1004] * 4  # the step ran once, eagerly, and right
    [fallback] = reg.stats()["fallbacks"]
    assert "write into registry buffer 'infer_seed' differs from the eager warmup" in fallback["reason"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_impure_capture_can_run_eagerly_instead(backend):
    reg = registry(backend, on_unsafe_capture="eager")
    counter = paddle.to_tensor([5.0])

    def step(*, x, counter):
        paddle.assign(counter + 1, output=counter)
        return x * counter

    graphed = reg.graphed("t", batch_arg="x")(step)
    x = rows(3)
    np.testing.assert_array_equal(graphed(x=x, counter=counter).numpy(), (x * 6.0).numpy())
    assert counter.numpy().tolist() == [6.0]  # exactly one step's advance: eager semantics
    [fallback] = reg.stats()["fallbacks"]
    assert fallback["bucket"] == 4 and "counter" in fallback["reason"]


# 5. What the graph reads besides its arguments ------------------------------------------


class TinyModel(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.lin = paddle.nn.Linear(3, 3)
        self.norm = paddle.nn.LayerNorm(3)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.norm(self.lin(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_parameter_rebound_by_a_weight_reload(backend):
    reg = registry(backend)
    model = TinyModel()
    graphed = reg.graphed("t", batch_arg="x")(model.forward)
    x = rows(4)
    assert_same(graphed(x), model(x))
    reloaded = paddle.create_parameter([3, 3], "float32")
    reloaded.set_value(paddle.randn([3, 3]))
    model.lin.weight = reloaded  # a reload that rebinds instead of writing in place
    with pytest.raises(AddressStabilityError, match=r"t\[bucket 4\]: self\.lin\.weight now holds another"):
        graphed(x)
    model.lin.weight.set_value(paddle.randn([3, 3]))  # in place: no error, and the graph sees it after reset
    reg.reset()
    assert_same(graphed(x), model(x))


def test_layer_parameter_rebound_gives_stale_results_unchecked():
    # The bug itself, on the backend that reads memory like a device graph.
    reg = registry("static", debug_checks=False)
    model = TinyModel()
    graphed = reg.graphed("t", batch_arg="x")(model.forward)
    x = rows(4)
    before = graphed(x).clone()
    model.lin.weight = paddle.create_parameter([3, 3], "float32")
    model.lin.weight.set_value(paddle.ones([3, 3]))
    assert not np.array_equal(model(x).numpy(), before.numpy())
    np.testing.assert_array_equal(graphed(x).numpy(), before.numpy())  # silently the old weights


@pytest.mark.parametrize("backend", BACKENDS)
def test_rebound_parameter_recaptures_when_asked(backend):
    reg = registry(backend, on_rebind="recapture")
    model = TinyModel()

    def forward(*, x):
        return model(x) * 2

    graphed = reg.graphed("t", batch_arg="x")(forward)
    x = rows(4)
    assert_same(graphed(x=x), model(x) * 2)
    model.lin = paddle.nn.Linear(3, 3)  # a whole sublayer swapped
    assert_same(graphed(x=x), model(x) * 2)
    assert reg.stats()["recaptures"] == 1 and reg.stats()["graphs"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_tensor_reallocated_inside_an_argument_object(backend):
    reg = registry(backend)
    cache = KVCache([paddle.randn([8, 3])])

    def step(*, x, cache):
        return x + cache.keys[0][:1]

    graphed = reg.graphed("t", batch_arg="x")(step)
    x = rows(4)
    assert_same(graphed(x=x, cache=cache), step(x=x, cache=cache))
    cache.keys[0] = paddle.randn([8, 3])  # re-allocated, as a growing cache does
    with pytest.raises(AddressStabilityError, match=r"static argument 'cache\.keys\[0\]' is not the tensor"):
        graphed(x=x, cache=cache)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_passed_as_an_argument_is_checked(backend):
    reg = registry(backend)
    model = TinyModel()

    def forward(*, x, model):
        return model(x)

    graphed = reg.graphed("t", batch_arg="x")(forward)
    x = rows(4)
    assert_same(graphed(x=x, model=model), model(x))
    model.norm.weight = paddle.create_parameter([3], "float32")
    with pytest.raises(AddressStabilityError, match=r"model\.norm\.weight"):
        graphed(x=x, model=model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_reallocation_of_a_parameter(backend):
    reg = registry(backend, address_check_interval=1)
    model = TinyModel()
    graphed = reg.graphed("t", batch_arg="x")(model.forward)
    x = rows(4)
    graphed(x)
    model.lin.bias.copy_(paddle.ones([6]), False)  # a different-shaped copy_ reallocates in place
    with pytest.raises(AddressStabilityError, match=r"self\.lin\.bias moved"):
        graphed(x)


def test_static_program_reads_only_what_the_scan_names():
    reg = registry("static")
    model = TinyModel()
    scale = paddle.to_tensor([3.0])

    def step(*, x):
        return model(x) * scale

    graphed = reg.graphed("t", batch_arg="x")(step)
    graphed(x=rows(4))
    [entry] = graphed._entries.values()
    # The traced program's captured inputs, minus graphcap's own buffers, are all named by the scan.
    assert sorted(entry.check.watched_paths) == sorted(
        ["model.lin.weight", "model.lin.bias", "model.norm.weight", "model.norm.bias", "scale"]
    )


# 6. Capture failures say why ---------------------------------------------------------------


class FailingBackend(EagerBackend):
    """The eager backend, except capturing fails the way a device capture can."""

    def capture(self, run, label, reachable=None):
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing")


def test_capture_failure_names_its_root_cause(caplog):
    reg = CaptureRegistry(GraphConfig(use_graph=True, capture_sizes=(4,)), backend=FailingBackend())
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 2)
    x = rows(3)
    with caplog.at_level(logging.DEBUG, logger="graphcap"):
        for _ in range(2):
            assert_same(graphed(x=x), x * 2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    first_line = warnings[0].getMessage().splitlines()[0]
    assert first_line.startswith("t[bucket 4]: capture failed on the eager backend: RuntimeError: "
                                 "cudaErrorStreamCaptureUnsupported")
    assert "runs eagerly" in first_line
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)  # the traceback, at DEBUG
    stats = reg.stats()
    assert stats["capture_failures"] == 1 and stats["eager_fallbacks"] == 2
    assert stats["fallbacks"][0]["bucket"] == 4 and "cudaErrorStreamCaptureUnsupported" in stats["fallbacks"][0]["reason"]


def test_capture_failure_can_be_fatal():
    reg = CaptureRegistry(GraphConfig(use_graph=True, capture_sizes=(4,), on_capture_failure="raise"),
                          backend=FailingBackend())
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 2)
    with pytest.raises(CaptureError, match="capture failed on the eager backend: RuntimeError: cudaError") as info:
        graphed(x=rows(3))
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_paddleformers_llama_out_of_the_box(backend, tiny_llama):
    reg = registry(backend)

    @reg.graphed("llama", batch_arg="input_ids")
    def forward(input_ids):
        return tiny_llama(input_ids=input_ids, use_cache=False, return_dict=True)

    for n in (4, 3):
        ids = paddle.randint(0, 128, [n, 6])
        got = forward(ids)
        # The graph computed a padded batch of 4: Paddle's CPU reductions round by tensor
        # size, so the direct call runs on the same padded rows (bit-exact comparison).
        padded = paddle.concat([ids, paddle.zeros([4 - n, 6], dtype=ids.dtype)]) if n < 4 else ids
        want = tiny_llama(input_ids=padded, use_cache=False, return_dict=True)
        assert type(got) is type(want)
        np.testing.assert_array_equal(got.logits.numpy(), want.logits.numpy()[:n])
    stats = reg.stats()
    assert stats["capture_failures"] == 0 and stats["graphs"] == 1 and stats["replays"] == 2


def test_paddleformers_llama_program_inputs_are_named(tiny_llama):
    reg = registry("static", capture_sizes=(2,))

    def forward(input_ids):
        return tiny_llama(input_ids=input_ids, use_cache=False, return_dict=True).logits

    graphed = reg.graphed("llama", batch_arg="input_ids")(forward)
    graphed(input_ids=paddle.randint(0, 128, [2, 4]))
    [entry] = graphed._entries.values()
    names = {name for name, _ in tiny_llama.named_parameters()} | {name for name, _ in tiny_llama.named_buffers()}
    watched = set(entry.check.watched_paths)
    # Every tensor the traced program reads is named by the path the scan reached it by.
    assert watched == {f"tiny_llama.{name}" for name in names}


# 7. The static backend runs functions as Python defines them -------------------------------


def loop_bound_defaults():
    made = []
    for scale in (2.0, 3.0):

        def step(*, x, scale=scale):
            return x * scale

        made.append(step)
    return made


class Scaler:
    def __init__(self, factor: float) -> None:
        self.factor = paddle.to_tensor([factor])

    def apply(self, x: paddle.Tensor, offset: float = 1.0) -> paddle.Tensor:
        return x * self.factor + offset


def make_closure():
    w = paddle.randn([3, 3])

    def step(x):
        return paddle.matmul(x, w)

    return step


def partial_target(x, *, w, bias):
    return paddle.matmul(x, w) + bias


def callables():
    first, second = loop_bound_defaults()
    yield "loop_default", first
    yield "loop_default_2", second
    yield "closure", make_closure()
    yield "lambda", lambda x: x * x - 1
    yield "partial", functools.partial(partial_target, w=paddle.randn([3, 3]), bias=1.5)
    yield "method", Scaler(2.5).apply
    yield "layer", TinyModel()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", [name for name, _ in callables()])
def test_functions_as_python_defines_them(backend, kind):
    fn = dict(callables())[kind]
    reg = registry(backend)
    graphed = reg.graphed("t", batch_arg="x")(fn)
    for n in (4, 2, 4):
        x = rows(n)
        assert_same(graphed(x=x), fn(x=x))
    stats = reg.stats()
    assert stats["capture_failures"] == 0 and stats["graphs"] == 2 and stats["replays"] == 3


# 8. A bounded number of graphs per bucket ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_varying_values_stop_at_max_graphs_per_bucket(backend):
    reg = registry(backend, max_graphs_per_bucket=2)

    def step(*, x, step_number):
        return x + step_number

    graphed = reg.graphed("t", batch_arg="x")(step)
    for step_number in range(4):  # a Python int that changes every call is part of the key
        x = rows(4)
        assert_same(graphed(x=x, step_number=step_number), step(x=x, step_number=step_number))
    stats = reg.stats()
    assert stats["graphs"] == 2 and stats["eager_fallbacks"] == 2
    assert "step_number" in stats["fallbacks"][0]["reason"]


def test_lambda_reading_a_closure_tensor_is_not_baked_into_a_static_graph():
    # Traced as written, `x * scale` would bake scale's value into the program.
    reg = registry("static")
    scale = paddle.to_tensor([1.0])
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * scale)
    x = rows(4)
    assert_same(graphed(x=x), x * scale)
    paddle.assign(paddle.to_tensor([3.0]), output=scale)  # updated in place, as documented
    assert_same(graphed(x=x), x * 3.0)
    [fallback] = reg.stats()["fallbacks"]
    assert "to_static cannot convert a lambda" in fallback["reason"] and "(scale)" in fallback["reason"]


@pytest.mark.parametrize("order", ["x_first", "tensor_first"])
def test_static_arguments_of_a_lambda_are_read_by_reference(order):
    reg = registry("static")
    scale = paddle.to_tensor([1.0])
    fn = (lambda x, scale: x * scale) if order == "x_first" else (lambda x, scale: scale * x)
    graphed = reg.graphed("t", batch_arg="x")(fn)
    x = rows(4)
    assert_same(graphed(x=x, scale=scale), fn(x, scale))
    paddle.assign(paddle.to_tensor([3.0]), output=scale)
    assert_same(graphed(x=x, scale=scale), fn(x, scale))  # the graph reads the updated value
    assert reg.stats()["graphs"] == 1 and reg.stats()["replays"] == 2


def test_tensor_defaults_bound_in_a_loop_are_read_by_reference():
    factor = paddle.to_tensor([2.0])
    for factor_now in (factor,):

        def step(*, x, factor=factor_now):
            return x * factor

    reg = registry("static")
    graphed = reg.graphed("t", batch_arg="x")(step)
    x = rows(4)
    assert_same(graphed(x=x), x * 2.0)
    paddle.assign(paddle.to_tensor([6.0]), output=factor)
    assert_same(graphed(x=x), x * 6.0)


# 9. Regressions from the review of the rewrite ---------------------------------------------
# Each was a silent wrong answer or a corrupted state before its fix; each is compared with
# calling the function directly.


class CountingModel(paddle.nn.Layer):
    """Keeps a step counter in a buffer and advances it every call: state of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", paddle.zeros([1]))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        paddle.assign(self.step + 1, output=self.step)
        return x * self.step


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_in_a_layer_buffer_is_refused_and_put_back(backend):
    model = CountingModel()
    reg = registry(backend)
    with pytest.raises(CaptureSafetyError, match=r"changed self\.step in place between two runs"):
        reg.graphed("t", batch_arg="x")(model.forward)(rows(4))
    assert model.step.numpy().tolist() == [0.0]  # the warmups' advances were put back
    reg = registry(backend, on_unsafe_capture="eager")
    graphed = reg.graphed("t", batch_arg="x")(model.forward)
    for expected in (1.0, 2.0, 3.0):
        x = rows(4)
        assert_same(graphed(x), x * expected)  # eager semantics, one advance per call


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_output_sliced_only_when_it_follows_the_rows(backend):
    reg = registry(backend)
    seeds = paddle.to_tensor([1, 2, 3, 4])  # [max_batch] = 4, the bucket, by coincidence

    def step(*, x, seeds):
        return x * 2, seeds + 0

    graphed = reg.graphed("t", batch_arg="x")(step)
    x = rows(3)
    assert_same(graphed(x=x, seeds=seeds), step(x=x, seeds=seeds))  # seeds keeps its 4 rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_output_with_its_rows_elsewhere_is_refused(backend):
    reg = registry(backend)
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x.flatten())
    x = rows(3)
    assert_same(graphed(x=x), x.flatten())
    assert "its rows are not its first dimension" in reg.stats()["fallbacks"][0]["reason"]


class Result:
    """A result class graphcap cannot open (no dataclass, no attrs)."""

    def __init__(self, value: paddle.Tensor) -> None:
        self.value = value


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_result_object_holding_computed_tensors_is_refused(backend):
    reg = registry(backend)

    def step(*, x):
        return Result(x.mean())

    graphed = reg.graphed("t", batch_arg="x")(step)
    for value in (1.0, 2.0):
        x = paddle.full([4, 2], value)
        assert graphed(x=x).value.numpy().tolist() == value  # not the capture's tensor
    assert "a Result holding tensors the function computed" in reg.stats()["fallbacks"][0]["reason"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_whose_structure_changes_are_refused(backend):
    reg = registry(backend)
    grown: list[paddle.Tensor] = []

    def step(*, x):
        grown.append(x * 0 + len(grown))
        return list(grown)

    with pytest.raises(CaptureSafetyError, match="results of different structure"):
        reg.graphed("t", batch_arg="x")(step)(x=rows(4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_adopted_buffer_advanced_every_call_is_refused(backend):
    reg = registry(backend)
    steps = paddle.zeros([4])
    reg.buffers.adopt("steps", steps)  # restore=False: rewritten with the same values only

    def step(*, x):
        paddle.assign(reg.buffers.steps + 1, output=reg.buffers.steps)
        return x

    with pytest.raises(CaptureSafetyError, match="registry buffer 'steps' different"):
        reg.graphed("t", batch_arg="x")(step)(x=rows(4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_strided_view_of_a_registry_buffer_is_copied_not_read_in_place(backend):
    reg = registry(backend, capture_sizes=(4,))
    buf = reg.buffers.declare("ids", [8], "float32")
    buf[:] = paddle.arange(8, dtype="float32")
    graphed = reg.graphed("t", batch_arg="x")(lambda x: x * 1)
    view = buf[0:6:2]  # shares the buffer's address, not its layout
    assert graphed(x=view).numpy().tolist() == [0.0, 2.0, 4.0]
    assert buf.numpy().tolist() == list(range(8))  # the buffer itself untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_that_changes_a_result_is_refused(backend):
    reg = registry(backend)

    def step(*, x, table):
        return x + table.mean(axis=0)  # table [3, 2]: 3 rows, like the batch, but a table

    graphed = reg.graphed("t", batch_arg="x")(step)
    table = paddle.arange(6, dtype="float32").reshape([3, 2])
    x = paddle.zeros([3, 2])
    assert_same(graphed(x=x, table=table), step(x=x, table=table))
    reason = reg.stats()["fallbacks"][0]["reason"]
    assert "rows interact" in reason and "name it in static_args" in reason
    declared = registry(backend).graphed("t", batch_arg="x", static_args=['table'])(step)  # the fix it names
    assert_same(declared(x=x, table=table), step(x=x, table=table))


def test_override_paths_accept_either_quote_and_name_a_parameter():
    reg = registry("eager")

    def step(*, x, state):
        return x + state["table"].mean(axis=0)

    graphed = reg.graphed("t", batch_arg="x", static_args=['state["table"]'])(step)
    x, state = paddle.zeros([3, 2]), {"table": paddle.ones([3, 2])}
    assert_same(graphed(x=x, state=state), step(x=x, state=state))
    assert "state['table']" not in graphed.staging
    with pytest.raises(CaptureError, match="starts from 'stat', which is not a parameter"):
        reg.graphed("u", batch_arg="x", static_args=["stat['table']"])(step)


class Scaled(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.lin = paddle.nn.Linear(2, 2)
        self.temperature = 1.0

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.lin(x) * self.temperature


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_python_value_changed_after_capture_is_caught(backend):
    model = Scaled()
    reg = registry(backend, address_check_interval=1, on_value_change="raise")
    graphed = reg.graphed("t", batch_arg="x")(model.forward)
    x = rows(4, 2)
    assert_same(graphed(x), model(x))
    model.temperature = 4.0
    with pytest.raises(AddressStabilityError, match=r"self\.temperature was 1\.0 at capture and is 4\.0 now"):
        graphed(x)
    model.temperature = 1.0
    default = registry(backend)  # on_value_change="auto": recapture, counted with the value's path
    graphed = default.graphed("t", batch_arg="x")(model.forward)
    assert_same(graphed(x), model(x))
    model.temperature = 4.0
    assert_same(graphed(x), model(x))
    assert default.stats()["recapture_reasons"][0]["reason"] == "self.temperature was 1.0 at capture and is 4.0 now"


class Rope(paddle.nn.Layer):
    table = paddle.ones([2])  # a class attribute the forward reads

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * Rope.table


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rebound_class_attribute_is_caught(backend):
    model = Rope()
    reg = registry(backend)
    graphed = reg.graphed("t", batch_arg="x")(model.forward)
    x = rows(4, 2)
    assert_same(graphed(x), model(x))
    original = Rope.table
    Rope.table = paddle.full([2], 4.0)
    try:
        with pytest.raises(AddressStabilityError, match=r"Rope\.table now holds another"):
            graphed(x)
    finally:
        Rope.table = original


@attrs.frozen
class FrozenMeta:
    ids: paddle.Tensor
    scale: float


class SlottedMeta:
    __slots__ = ("ids", "scale")

    def __init__(self, ids: paddle.Tensor, scale: float) -> None:
        self.ids, self.scale = ids, scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", [FrozenMeta, SlottedMeta])
def test_attrs_and_slots_argument_objects_are_opened(backend, kind):
    reg = registry(backend)

    def step(*, x, meta):
        return x * meta.scale + meta.ids.unsqueeze(-1).astype("float32")

    graphed = reg.graphed("t", batch_arg="x")(step)
    for n in (3, 4):
        x, meta = rows(n), kind(paddle.arange(n), 2.0)
        assert_same(graphed(x=x, meta=meta), step(x=x, meta=meta))
    assert "meta.ids" in graphed.staging


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_layer_as_the_function_is_called_positionally(backend):
    model = TinyModel()
    graphed = registry(backend).graphed("t", batch_arg="x")(model)
    x = rows(4)
    assert_same(graphed(x), model(x))


def test_a_method_in_a_class_body_is_refused_with_the_fix():
    reg = registry("eager")
    with pytest.raises(CaptureError, match=r"graph the bound method of an instance instead: .*\(instance\.forward\)"):

        class Model:
            @reg.graphed("t", batch_arg="x")
            def forward(self, x):
                return x


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_of_an_adopted_cache_are_declared_state(backend):
    reg = registry(backend)
    cache = paddle.zeros([2, 8, 3])
    reg.buffers.adopt("kv", cache)

    def step(*, x, caches):
        paddle.assign(x[:1] * 0 + 1, output=caches[0][:1])  # rewritten with the same values every step
        return x + caches[0][:1]

    graphed = reg.graphed("t", batch_arg="x")(step)
    x = rows(4)
    out = graphed(x=x, caches=[cache[0], cache[1]])
    assert_same(out, x + 1)
    if backend == "eager":
        assert reg.stats()["fallbacks"] == []  # not mistaken for undeclared state
    else:  # to_static refuses writes into a view, and says so: the bucket runs eagerly
        assert "viewed Tensor" in reg.stats()["fallbacks"][0]["reason"]


class Holder:
    pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_holder_filled_and_returned_runs_eagerly(backend):
    reg = registry(backend)
    holder = Holder()

    def step(*, x):
        holder.logits = x * 2
        return holder

    graphed = reg.graphed("t", batch_arg="x")(step)
    for value in (1.0, 2.0):
        assert graphed(x=paddle.full([4, 2], value)).logits.numpy().tolist() == [[value * 2] * 2] * 4
    assert isinstance(holder.logits, paddle.Tensor)
    assert "holding tensors the function computed" in reg.stats()["fallbacks"][0]["reason"]
