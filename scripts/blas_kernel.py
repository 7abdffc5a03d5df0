"""The OpenBLAS kernel the project's programs pick for this CPU (src/core/process.cpp's
select_blas_core), so that a Python reference measured beside them runs the same one."""


def cpu_has(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and f" {flag} " in line + " " for line in f)
    except OSError:
        return False


def openblas_coretype():
    """SKYLAKEX with AVX-512, HASWELL with AVX2, else None (OpenBLAS's own detection)."""
    if cpu_has("avx512f"):
        return "SKYLAKEX"
    if cpu_has("avx2"):
        return "HASWELL"
    return None


def with_blas_kernel(env):
    """env with OPENBLAS_CORETYPE set as the project's programs would set it, unless already set."""
    core = openblas_coretype()
    if "OPENBLAS_CORETYPE" not in env and core:
        env = dict(env, OPENBLAS_CORETYPE=core)
    return env
