from __future__ import annotations

import numpy as np
import paddle
import pytest

from graphcap import AddressStabilityError, StaticBufferError, StaticBuffers


@pytest.fixture
def bufs() -> StaticBuffers:
    bufs = StaticBuffers(owner="bufs")
    bufs.declare("x", [8, 3], "float32")
    bufs.declare("batch_id_per_token_output", [8], "int32", pad="value", pad_value=-1)
    bufs.declare("row0", [8, 2], "int64", pad="copy_row0")
    bufs.declare("kept", [8], "int32", pad="keep")
    return bufs


def test_writes_are_in_place_and_pad_by_rule(bufs):
    ptr = bufs.x.data_ptr()
    bufs.write("x", paddle.ones([3, 3]))
    assert bufs.x[:3].data_ptr() == ptr and bufs.x.data_ptr() == ptr
    np.testing.assert_array_equal(bufs.x.numpy()[:3], 1.0)
    np.testing.assert_array_equal(bufs.x.numpy()[3:], 0.0)
    bufs.write("batch_id_per_token_output", paddle.to_tensor([0, 0, 1], dtype="int32"))
    assert bufs.batch_id_per_token_output.numpy().tolist() == [0, 0, 1, -1, -1, -1, -1, -1]
    bufs.write("row0", paddle.to_tensor([[7, 8], [9, 10]], dtype="int64"))
    assert bufs.row0.numpy()[2:].tolist() == [[7, 8]] * 6
    bufs.write("kept", paddle.arange(8, dtype="int32"))
    bufs.write("kept", paddle.to_tensor([5], dtype="int32"))
    assert bufs.kept.numpy().tolist() == [5, 1, 2, 3, 4, 5, 6, 7]


def test_padding_rows_never_carry_the_previous_step(bufs):
    bufs.write("x", paddle.full([8, 3], 9.0))
    bufs.write("x", paddle.ones([2, 3]))
    np.testing.assert_array_equal(bufs.x.numpy()[2:], 0.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (paddle.ones([2, 3], dtype="float64"), "holds float32 but the write is float64"),
        (paddle.ones([2, 4]), "rows of shape [3]"),
        (paddle.ones([9, 3]), "takes 8 rows but the write has 9"),
    ],
)
def test_bad_writes_raise_naming_the_buffer(bufs, value, message):
    before = bufs.x.numpy().copy()
    with pytest.raises(StaticBufferError) as info:
        bufs.write("x", value)
    assert "'x'" in str(info.value) and message in str(info.value)
    np.testing.assert_array_equal(bufs.x.numpy(), before)


def test_rebinding_raises_with_the_fix(bufs):
    with pytest.raises(AddressStabilityError, match=r"write\('x', value\)"):
        bufs.x = paddle.ones([8, 3])
    with pytest.raises(AddressStabilityError, match="rebinding"):
        bufs["x"] = paddle.ones([8, 3])
    with pytest.raises(AddressStabilityError):
        del bufs.x


def test_writing_the_buffer_itself_skips_the_copy(bufs):
    bufs.write("x", paddle.full([8, 3], 2.0))
    view = bufs.x[:5]
    assert view.data_ptr() == bufs.x.data_ptr()
    bufs.write("x", view)
    np.testing.assert_array_equal(bufs.x.numpy()[:5], 2.0)
    np.testing.assert_array_equal(bufs.x.numpy()[5:], 0.0)


def test_redeclare_same_spec_returns_same_tensor_and_other_spec_raises(bufs):
    assert bufs.declare("x", [8, 3], "float32") is bufs.x
    with pytest.raises(StaticBufferError, match="already declared"):
        bufs.declare("x", [8, 4], "float32")


def test_unknown_buffer_names_known_ones(bufs):
    with pytest.raises(StaticBufferError, match="no buffer 'y'"):
        bufs.write("y", paddle.ones([1]))


def test_declared_buffers_are_restored_around_capture_and_adopted_ones_are_not(bufs):
    cache = paddle.zeros([4, 8])
    bufs.adopt("kv_cache", cache)
    bufs.declare("scratch", [4], "float32", restore=False)
    restorable = [tensor for _, tensor in bufs.restorable_items()]
    assert any(t is bufs.x for t in restorable)
    assert not any(t is cache for t in restorable)
    assert not any(t is bufs.scratch for t in restorable)
    assert bufs.kv_cache is cache  # adopted, not copied
