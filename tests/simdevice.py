"""A second device on a CPU-only machine, for tests of device handling.

Inside `sim_device()`, tensors on SIM ("privateuseone:0") compute on the CPU, wrapped in SimTensor, but
an op that mixes them with CPU tensors fails as it does between CUDA and CPU tensors ("Expected all
tensors to be on the same device"), with CUDA's exceptions: 0-dim CPU tensors (scalars), CPU index
tensors for indexing, and copies. `.numpy()` fails and `.tolist()` copies to the host, as on CUDA.
The mode also records every op that makes the host wait for the device (`syncs`): a device-to-host
copy, a scalar read (.item(), bool(), int()), a blocking host-to-device copy, and ops whose output
shape depends on device values (nonzero, boolean masks). So a CPU-only suite fails where CUDA would.

SIM is not "cuda": code that takes CUDA-only paths (graphs, Triton, torch.cuda.*) stays on its generic
path here; those paths have their own CUDA tests.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

SIM = torch.device("privateuseone", 0)
_registered = False

aten = torch.ops.aten
COPIES = {aten._to_copy.default, aten.copy_.default, aten.to.device, aten.to.dtype_layout, aten.to.other,
          aten.to.dtype}
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten.repeat_interleave.Tensor,
                  aten._unique2.default, aten.unique_consecutive.default}


def _register_backend() -> None:
    """PrivateUse1 as a Python backend (device guard, hooks), so tensors can claim that device."""
    global _registered
    if not _registered:
        from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

        _setup_privateuseone_for_python_backend()
        _registered = True


class SimTensor(torch.Tensor):
    """A tensor on SIM: `elem` holds its values on the CPU."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                device=SIM, requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a SimTensor outside sim_device()")

    def tolist(self):
        return self.cpu().tolist()  # a device-to-host copy, as on CUDA

    def numpy(self, *args, **kwargs):
        raise TypeError(f"can't convert {SIM} device type tensor to numpy. Use Tensor.cpu() first.")

    def __repr__(self):
        return f"SimTensor({self.elem!r})"


def _wrap(t: torch.Tensor) -> SimTensor:
    with torch.inference_mode(False):  # a wrapper made under inference mode cannot be a view's output
        return SimTensor(t)


def _unwrap(x):
    return x.elem if isinstance(x, SimTensor) else x


def _where(t: torch.Tensor) -> str:
    return "sim" if isinstance(t, SimTensor) else t.device.type


def _scalar(t: torch.Tensor) -> bool:
    return not isinstance(t, SimTensor) and t.device.type == "cpu" and t.dim() == 0


class SimDevice(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []  # every op that made the host wait for the device, in order

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        on_sim = any(isinstance(t, SimTensor) for t in tensors)
        devices = [a for a in flat if isinstance(a, torch.device)]
        to_sim = devices[0].type == SIM.type if devices else on_sim
        self._check_devices(func, args, tensors)
        self._record_sync(func, args, kwargs, on_sim, to_sim)
        args, kwargs = tree_map(lambda a: torch.device("cpu") if isinstance(a, torch.device) else a, (args, kwargs))
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if func._schema.is_mutable and args and isinstance(args[0], torch.Tensor):
            return args[0]  # in place: the caller's tensor (a SimTensor stays one)
        if on_sim and not isinstance(out, torch.Tensor) and isinstance(out, (bool, int, float)):
            self.syncs.append(str(func))  # a value read back, e.g. aten.equal
        if not to_sim:
            return out
        return tree_map(lambda t: _wrap(t) if isinstance(t, torch.Tensor) else t, out)

    def _record_sync(self, func, args, kwargs, on_sim, to_sim):
        if func is aten._local_scalar_dense.default and on_sim:
            self.syncs.append("item")
        elif func in COPIES:
            src = args[1] if func is aten.copy_.default else args[0]
            dst_sim = isinstance(args[0], SimTensor) if func is aten.copy_.default else to_sim
            blocking = not (kwargs.get("non_blocking") or (func is aten.copy_.default and len(args) > 2 and args[2]))
            if isinstance(src, SimTensor) and not dst_sim:
                self.syncs.append("device-to-host copy")
            elif not isinstance(src, SimTensor) and dst_sim and blocking and not _scalar(src):
                self.syncs.append("blocking host-to-device copy")
        elif func in DATA_DEPENDENT and on_sim:
            self.syncs.append(str(func))
        elif func is aten.index.Tensor and on_sim and any(
                i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
            self.syncs.append("boolean mask")

    @staticmethod
    def _check_devices(func, args, tensors):
        if func in COPIES:
            return  # copies move between devices
        if func in INDEXING:  # indices may stay on the CPU; self and values must agree
            indices = [i for i in args[1] if i is not None]
            others = [t for t in tensors if not any(t is i for i in indices)]
            here = {_where(t) for t in others if not _scalar(t)}
            if len(here) > 1 or not {_where(i) for i in indices} <= here | {"cpu"}:
                raise RuntimeError(f"Expected all tensors to be on the same device ({func}: "
                                   f"{[_where(t) for t in tensors]})")
            return
        here = {_where(t) for t in tensors if not _scalar(t)}
        if len(here) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two "
                               f"devices, {SIM} and cpu! ({func})")


class _Constructors(TorchFunctionMode):
    """torch.tensor(data, device=SIM) and friends: built on the CPU, then copied (blocking, as CUDA
    does); their C++ path would not reach the dispatch mode."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and device is not None \
                and torch.device(device).type == SIM.type:
            return func(*args, **dict(kwargs, device="cpu")).to(SIM)
        return func(*args, **kwargs)


@contextlib.contextmanager
def sim_device():
    """-> the active SimDevice mode (its .syncs) while SIM tensors can be made and used."""
    _register_backend()
    mode = SimDevice()
    with mode, _Constructors():
        yield mode


def devices_of(obj) -> set[str]:
    """Device types of every tensor in a nested structure (dicts, lists, tuples, attributes no)."""
    flat, _ = tree_flatten(obj)
    return {_where(t) if isinstance(t, SimTensor) else t.device.type for t in flat if isinstance(t, torch.Tensor)}
