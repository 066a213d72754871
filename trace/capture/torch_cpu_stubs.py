#!/usr/bin/env python3
"""Make PyPI's CUDA build of torch importable on a machine without the CUDA wheels.

PyPI has no CPU-only torch for Linux x86_64: the `torch` wheel there is the CUDA build,
and its shared libraries (libtorch_cpu.so included) list CUDA libraries as ELF NEEDED
entries (libcudart.so.13, libcublas.so.13, libcudnn.so.9, ...). Installing the wheel
with `--no-deps` therefore fails at `import torch` with "libcufile.so.0: cannot open
shared object file". The CUDA wheels that would satisfy those entries weigh about
2.5 GB to download (cudnn, cublas, cusparse, nccl, cufft, cusparselt, nvshmem, ...).

This script writes small *stub* libraries instead, into torch/lib (the first directory
on torch's RPATH is `$ORIGIN`): one per missing CUDA library, carrying that library's
SONAME, its symbol-version node, and every symbol torch imports from it. Each stub
function does nothing and returns 100 (cudaErrorNoDevice for the runtime API; a
non-zero "failed" status for cuBLAS/cuDNN/NCCL/...), and the *GetErrorString/Name
functions return a static message. The loader is satisfied, CPU code runs untouched
(it never calls these functions), and `torch.cuda.is_available()` is False. A CUDA call
made anyway fails with an error instead of running.

Needs a C compiler (`cc`) and `readelf` (binutils). Idempotent: a torch/lib that
already loads (real CUDA libraries present, or stubs already written) is left alone.

    python3 torch_cpu_stubs.py            # write stubs for the installed torch
    python3 torch_cpu_stubs.py --check    # exit 0 if `import torch` works, 1 if not
    python3 torch_cpu_stubs.py --remove   # delete the stubs this script wrote
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

MARKER = "kvsim-cuda-stub"  # written into each stub (as a string) and into the manifest
MANIFEST = "KVSIM_CUDA_STUBS.txt"
# Never stub the driver: libcaffe2_nvrtc.so (the only user) is dlopen'ed on CUDA use only.
SKIP_LIBS = {"libcuda.so.1"}
# The CUDA libraries torch's wheel expects from the nvidia-* wheels. Only these are ever
# stubbed; any other missing library (libz, libquadmath, ...) is a real problem to report.
CUDA_LIB_RE = re.compile(r"^lib(cudart|cublas|cublasLt|cudnn\w*|cufft\w*|cufile\w*|cupti|curand|cusolver\w*|"
                         r"cusparse|cusparseLt|nccl|nvrtc\w*|nvshmem\w*|nvJitLink|nvToolsExt|nvperf\w*)\.so")


def torch_dir() -> str:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torch is not installed (pip install --no-deps torch==...)")
    return list(spec.submodule_search_locations)[0]


def import_ok() -> tuple[bool, str]:
    code = "import torch; x = torch.ones(3) @ torch.ones(3); assert float(x) == 3.0; print(torch.__version__, torch.cuda.is_available())"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def needed(path: str) -> list[str]:
    out = run(["readelf", "-d", "-W", path])
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def version_needs(path: str) -> dict[str, str]:
    """version name -> file that must provide it (from .gnu.version_r)."""
    out = run(["readelf", "-V", "-W", path])
    res: dict[str, str] = {}
    cur = None
    in_needs = False
    for line in out.splitlines():
        if "Version needs section" in line:
            in_needs = True
            continue
        if not in_needs:
            continue
        m = re.search(r"File: (\S+)", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and cur:
            res[m.group(1)] = cur
    return res


_SYM_RE = re.compile(r"^\s*\d+:\s+[0-9a-f]+\s+\d+\s+(\w+)\s+(\w+)\s+\w+\s+(\w+)\s+(\S+)")


def dyn_symbols(path: str) -> tuple[list[tuple[str, str | None, str]], set[str]]:
    """(undefined [(name, version or None, bind)], defined names) of a shared object."""
    out = run(["readelf", "--dyn-syms", "-W", path])
    und, defined = [], set()
    for line in out.splitlines():
        m = _SYM_RE.match(line)
        if not m:
            continue
        _typ, bind, ndx, name = m.groups()
        ver = None
        if "@" in name:
            name, _, ver = name.partition("@")
            ver = ver.lstrip("@")
            ver = ver.split(" ")[0]
        if not name:
            continue
        if ndx == "UND":
            und.append((name, ver, bind))
        else:
            defined.add(name)
    return und, defined


def system_lib(name: str) -> str | None:
    try:
        out = run(["ldconfig", "-p"])
    except Exception:
        out = ""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith(name + " ") and "x86-64" in line:
            return line.split("=>")[-1].strip()
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    return None


def c_name_ok(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None


def make_stubs(tdir: str, verbose: bool = True) -> list[str]:
    libdir = os.path.join(tdir, "lib")
    objs = sorted(glob.glob(os.path.join(libdir, "*.so*")) + glob.glob(os.path.join(tdir, "_C*.so")))
    objs = [o for o in objs if not os.path.islink(o) or os.path.exists(o)]
    present = {os.path.basename(o) for o in glob.glob(os.path.join(libdir, "*.so*"))}
    # a stub written earlier counts as missing (we regenerate it)
    manifest_path = os.path.join(libdir, MANIFEST)
    old_stubs = set()
    if os.path.exists(manifest_path):
        old_stubs = {l.strip() for l in open(manifest_path) if l.strip() and not l.startswith("#")}
    present -= old_stubs
    objs = [o for o in objs if os.path.basename(o) not in old_stubs]

    missing: set[str] = set()
    all_needed: dict[str, list[str]] = {}
    for o in objs:
        n = needed(o)
        all_needed[o] = n
        for lib in n:
            # A system CUDA toolkit (e.g. /usr/local/cuda) is deliberately not used: the
            # stubs sit on torch's RPATH ($ORIGIN), so every machine behaves alike.
            if lib in present or lib in SKIP_LIBS or not CUDA_LIB_RE.match(lib):
                continue
            missing.add(lib)
    if not missing:
        return []

    defined: set[str] = set()
    for o in objs:
        defined |= dyn_symbols(o)[1]
    for lib in ("libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libdl.so.2",
                "librt.so.1", "libpthread.so.0", "ld-linux-x86-64.so.2"):
        p = system_lib(lib)
        if p:
            defined |= dyn_symbols(p)[1]

    # symbols per missing library, with the version node they need (if any)
    syms: dict[str, dict[str, str | None]] = {lib: {} for lib in missing}
    for o in objs:
        vmap = version_needs(o)
        und, _ = dyn_symbols(o)
        miss_here = [l for l in all_needed[o] if l in missing]
        for name, ver, bind in und:
            if ver and ver in vmap:
                lib = vmap[ver]
                if lib in missing:
                    syms[lib][name] = ver
                continue
            if ver:  # versioned against a library that is present
                continue
            if name in defined or bind == "WEAK" or not miss_here:
                continue
            # unversioned and defined nowhere: give it to a missing library this object needs
            syms[miss_here[0]].setdefault(name, None)

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for lib in sorted(missing):
            table = syms[lib]
            bad = [n for n in table if not c_name_ok(n)]
            if bad:
                raise SystemExit(f"cannot stub {lib}: odd symbol names {bad[:3]}")
            versions = sorted({v for v in table.values() if v})
            src = [f'/* {MARKER}: stands in for {lib}; generated by trace/capture/torch_cpu_stubs.py */',
                   f'__attribute__((used)) static const char kvsim_msg[] = "CUDA is not available: {lib} is a {MARKER} (CPU-only torch install)";',
                   "__attribute__((used)) static long kvsim_fail(void) { return 100; }",
                   "__attribute__((used)) static const char *kvsim_str(void) { return kvsim_msg; }"]
            for name in sorted(table):
                target = "kvsim_str" if re.search(r"(GetErrorString|GetErrorName|getErrorString|GetString)$", name) else "kvsim_fail"
                src.append(f'long {name}(void) __attribute__((alias("{target}")));' if target == "kvsim_fail"
                           else f'const char *{name}(void) __attribute__((alias("{target}")));')
            cfile = os.path.join(tmp, lib + ".c")
            with open(cfile, "w") as f:
                f.write("\n".join(src) + "\n")
            cmd = ["cc", "-shared", "-fPIC", "-O1", "-w", f"-Wl,-soname,{lib}", "-o", os.path.join(tmp, lib), cfile]
            if versions:
                vfile = os.path.join(tmp, lib + ".map")
                with open(vfile, "w") as f:
                    unver = [n for n, v in table.items() if not v]
                    for i, v in enumerate(versions):
                        names = sorted(n for n, vv in table.items() if vv == v)
                        if i == 0:
                            names += sorted(unver)
                        body = "".join(f"    {n};\n" for n in names)
                        f.write(f"{v} {{\n  global:\n{body}" + ("  local: *;\n" if i == 0 else "") + "};\n")
                cmd.insert(-3, f"-Wl,--version-script={vfile}")
            try:
                subprocess.run(cmd, check=True, capture_output=True, text=True)
            except subprocess.CalledProcessError as e:
                raise SystemExit(f"compiling the stub for {lib} failed:\n{e.stderr[-2000:]}")
            shutil.copy2(os.path.join(tmp, lib), os.path.join(libdir, lib))
            written.append(lib)
            if verbose:
                print(f"  stub {lib}: {len(table)} symbols" + (f", version {', '.join(versions)}" if versions else ""))
    with open(manifest_path, "w") as f:
        f.write(f"# {MARKER}: stub libraries written by trace/capture/torch_cpu_stubs.py; "
                "delete them (python3 torch_cpu_stubs.py --remove) before installing the CUDA wheels\n")
        f.write("\n".join(sorted(set(written) | old_stubs)) + "\n")
    return written


def remove_stubs(tdir: str) -> list[str]:
    libdir = os.path.join(tdir, "lib")
    manifest_path = os.path.join(libdir, MANIFEST)
    if not os.path.exists(manifest_path):
        return []
    removed = []
    for l in open(manifest_path):
        l = l.strip()
        if not l or l.startswith("#"):
            continue
        p = os.path.join(libdir, l)
        if os.path.exists(p):
            with open(p, "rb") as fh:
                if MARKER.encode() in fh.read():
                    os.remove(p)
                    removed.append(l)
    os.remove(manifest_path)
    return removed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only test whether `import torch` works")
    ap.add_argument("--remove", action="store_true", help="remove the stubs this script wrote")
    ap.add_argument("--force", action="store_true", help="write stubs even if torch already imports")
    a = ap.parse_args()
    tdir = torch_dir()
    if a.remove:
        r = remove_stubs(tdir)
        print("removed:", " ".join(r) if r else "nothing")
        return 0
    ok, msg = import_ok()
    if a.check:
        print(("ok: " if ok else "FAILED: ") + msg.splitlines()[-1] if msg else "")
        return 0 if ok else 1
    if ok and not a.force:
        print(f"torch imports already ({msg.splitlines()[-1]}); no stubs needed")
        return 0
    print(f"writing CUDA stub libraries into {os.path.join(tdir, 'lib')}")
    make_stubs(tdir)
    ok, msg = import_ok()
    if not ok:
        print(msg[-3000:], file=sys.stderr)
        print("torch still does not import after writing stubs", file=sys.stderr)
        return 1
    print(f"ok: torch {msg.splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
