"""DLPack in and out of the layer: same memory both ways, every dtype the layer takes, and
typed errors (with the Rust message) for wrong dtype, layout and device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import moe_rs

TORCH_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int32, torch.int64, torch.int8, torch.uint8]
NUMPY_DTYPES = [np.float32, np.float16, np.int32, np.int64, np.int8, np.uint8]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_round_trip_shares_memory(dtype):
    t = (torch.arange(24) % 7).to(dtype).reshape(4, 6)
    back = moe_rs.borrow(t)
    assert isinstance(back, torch.Tensor)
    assert back.data_ptr() == t.data_ptr()
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back, t)


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_round_trip_shares_memory(dtype):
    a = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    back = moe_rs.borrow(a)
    assert isinstance(back, np.ndarray)
    assert back.ctypes.data == a.ctypes.data
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


def test_borrow_keeps_the_producer_alive():
    t = torch.full((1000,), 3.0)
    ptr = t.data_ptr()
    back = moe_rs.borrow(t)
    del t  # the capsule's deleter has not run: `back` still owns a reference
    assert back.data_ptr() == ptr
    assert float(back.sum()) == 3000.0


def test_row_slices_and_size_one_dims_are_contiguous():
    base = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    rows = base[3:7]  # contiguous rows with an offset
    back = moe_rs.borrow(rows)
    assert back.data_ptr() == rows.data_ptr()
    col = base[:, :1].reshape(10, 1).t()  # [1, 10] with a stride torch reports freely
    assert moe_rs.borrow(col.contiguous()).shape == (1, 10)


def test_requires_grad_tensors_are_borrowed_through_a_detached_view():
    p = torch.nn.Parameter(torch.ones(3, 3))
    back = moe_rs.borrow(p)
    assert back.data_ptr() == p.data_ptr()


def test_wrong_dtype_is_a_dtype_error():
    with pytest.raises(moe_rs.DTypeError, match=r"dtype mismatch for `x`.*float64"):
        moe_rs.borrow(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(moe_rs.DTypeError, match="complex"):
        moe_rs.borrow(np.zeros(2, dtype=np.complex64))
    assert issubclass(moe_rs.DTypeError, moe_rs.MoeError)


def test_non_contiguous_is_a_shape_error():
    with pytest.raises(moe_rs.ShapeError, match="contiguous row-major"):
        moe_rs.borrow(torch.zeros(4, 6).t())
    with pytest.raises(moe_rs.ShapeError, match="contiguous row-major"):
        moe_rs.borrow(np.zeros((4, 6), dtype=np.float32)[:, ::2])


class _FakeCudaTensor:
    """A DLPack producer that says it lives on cuda:1 (no GPU is needed to test the refusal,
    which happens before any memory is touched)."""

    def __dlpack_device__(self):
        return (2, 1)

    def __dlpack__(self, **_kwargs):
        raise AssertionError("a device tensor must be refused before it is exported")


def test_device_tensor_is_a_device_error():
    with pytest.raises(moe_rs.DeviceError, match=r"`x` is on cuda:1"):
        moe_rs.borrow(_FakeCudaTensor())


def test_non_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="supports DLPack"):
        moe_rs.borrow([1.0, 2.0])


def test_output_capsule_is_consumed_once_and_released():
    out = moe_rs._native.borrow(torch.ones(2, 2))
    cap = out.__dlpack__()
    assert torch.utils.dlpack.from_dlpack(cap).sum() == 4
    with pytest.raises(RuntimeError):
        torch.utils.dlpack.from_dlpack(cap)  # a used capsule cannot be consumed again
    del cap
    unused = out.__dlpack__()  # never consumed: its destructor releases it
    del unused
    assert out.__dlpack_device__() == (1, 0)
    with pytest.raises(moe_rs.DeviceError):
        out.__dlpack__(dl_device=(2, 0))
