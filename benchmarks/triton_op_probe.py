"""Does torch.compile(fullgraph=True) compile a call of rubikops' Triton op
(an opaque custom op) on this machine's torch and Triton, and give the
compiled C++ kernel's result?  Informational (prints OK or the error); run by
gpu_check.sh."""
import sys

import torch

import rubikops

if not torch.cuda.is_available():
    sys.exit("Triton op compile probe: needs a CUDA GPU")
src = torch.randn(2, 1, 16, 16, 16, device="cuda")
origins = torch.randint(0, 8, (2, 8, 3), device="cuda")
rot = torch.randint(0, 48, (2, 8), device="cuda")


mask = torch.rand(2, 8, device="cuda") < 0.5
kw = dict(mask=mask, keep_prob=0.3, seed=2**62 + 5)  # a seed above 2**32: inductor checks integer arguments' width


@torch.compile(fullgraph=True)
def f(s, o, r, m):
    return rubikops.extract_cubes(s, o, (8, 8, 8), rotations=r, validate=False, backend="triton",
                                  mask=m, keep_prob=0.3, seed=kw["seed"]) * 2


try:
    got = f(src, origins, rot, mask)
    ok = torch.equal(got, 2 * rubikops.extract_cubes(src, origins, (8, 8, 8), rotations=rot, backend="compiled",
                                                     **kw))
    print(f"Triton op compile probe: torch.compile {'OK' if ok else 'WRONG RESULT'} (torch {torch.__version__})")
except Exception as exc:  # noqa: BLE001 - report whatever inductor raises
    import traceback
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}" for f in reversed(frames))
    print(f"Triton op compile probe: torch.compile failed on torch {torch.__version__}: {type(exc).__name__}: "
          f"{' '.join(str(exc).split())[:400]} [at {where}]")
