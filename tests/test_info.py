"""pycomm.info(), `pycomm info`, and importing pycomm without its optional dependencies."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pycomm

# Makes mpi4py, torch and cupy unimportable in a child interpreter, as on a machine without them.
_BLOCK_OPTIONAL = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"mpi4py", "torch", "cupy"}:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, _Missing())
    """
)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_info_is_json_and_names_this_version() -> None:
    report = pycomm.info()
    assert json.loads(json.dumps(report)) == report
    assert report["version"] == pycomm.__version__ == importlib.metadata.version("pycomm")
    assert report["build"]["kernel_isa_active"] in report["build"]["kernel_isas"]


def test_build_found_mpich_headers_from_the_wheel() -> None:
    build = pycomm.info()["build"]
    assert build["mpi_headers"], build
    if build["mpi_headers_source"].startswith("build environment"):
        assert build["mpi_headers_version"].startswith("MPICH 5"), build


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="mpi4py is not installed")
def test_mpi_runtime_is_mpich_5_and_info_leaves_mpi_uninitialised(tmp_path: Path) -> None:
    code = "import json, sys, pycomm\nprint(json.dumps([pycomm.info()['mpi'], 'mpi4py.MPI' in sys.modules]))"
    child = run_python(code, tmp_path)
    assert child.returncode == 0, child.stderr
    mpi, mpi_loaded = json.loads(child.stdout)
    assert mpi["available"] and mpi["impl"] == "MPICH" and mpi["version"].startswith("5."), mpi
    assert Path(mpi["mpiexec"]).exists()
    assert not mpi_loaded, "info() must not import mpi4py.MPI (that initialises MPI) in the caller"


def test_cuda_report_matches_the_built_module() -> None:
    report = pycomm.info()
    cuda_module = importlib.util.find_spec("pycomm._cuda")
    assert report["build"]["cuda"] == report["cuda"]["built"] == (cuda_module is not None)
    if report["cuda"]["built"]:
        assert isinstance(report["cuda"]["devices"], int)
        if report["cuda"]["devices"] == 0:
            assert report["cuda"]["reason"]
    else:
        assert "no CUDA compiler" in report["cuda"]["reason"]


def test_pycomm_info_command_prints_text_and_json(tmp_path: Path) -> None:
    text = subprocess.run(
        [sys.executable, "-m", "pycomm", "info"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert text.returncode == 0, text.stderr
    assert f"pycomm {pycomm.__version__}" in text.stdout and "MPI headers" in text.stdout
    out = tmp_path / "info.json"
    as_json = subprocess.run(
        [sys.executable, "-m", "pycomm", "info", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(out.read_text())["version"] == pycomm.__version__


def test_import_without_optional_dependencies(tmp_path: Path) -> None:
    code = _BLOCK_OPTIONAL + textwrap.dedent(
        """
        import numpy as np
        import pycomm
        from pycomm import kernels
        from pycomm.testing import run_mpi

        assert kernels.reduce([np.arange(4, dtype=np.int32)] * 3).tolist() == [0, 3, 6, 9]
        report = pycomm.info()
        assert not report["mpi"]["available"] and not report["torch"]["available"]
        try:
            run_mpi(["-c", "pass"], nprocs=1)
        except pycomm.MissingDependencyError as error:
            print(report["mpi"]["reason"])
            print(error)
        else:
            raise SystemExit("run_mpi worked without mpi4py")
        try:
            import pycomm.torch
        except pycomm.MissingDependencyError as error:
            print(error)
        else:
            raise SystemExit("pycomm.torch imported without torch")
        """
    )
    child = run_python(code, tmp_path)
    assert child.returncode == 0, child.stdout + child.stderr
    reason, error, torch_error = child.stdout.strip().splitlines()
    assert 'pip install "pycomm[mpi]"' in reason
    assert "mpi4py" in error and 'pip install "pycomm[mpi]"' in error
    assert "pycomm.torch needs torch" in torch_error and 'pip install "pycomm[torch]"' in torch_error


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="mpi4py is not installed")
def test_info_finds_mpi_when_run_from_a_source_checkout(tmp_path: Path) -> None:
    # A directory holding a `pycomm` package without the compiled core, like the repository root.
    (tmp_path / "pycomm").mkdir()
    (tmp_path / "pycomm" / "__init__.py").write_text("raise ImportError('source tree')\n")
    # The console script imports the installed pycomm (its sys.path starts at its own directory).
    script = Path(sys.executable).with_name("pycomm")
    result = subprocess.run(
        [str(script), "info", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mpi"]["available"], result.stdout
