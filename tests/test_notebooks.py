"""The course notebooks: each .py / .ipynb pair agrees, and each notebook runs end to end (FAST mode).

The notebooks run in a Jupyter kernel of this very interpreter (a kernel spec written into a temporary
JUPYTER_PATH), with JAXDIFF_NOTEBOOK_FAST=1 and matplotlib's inline backend (Agg rendering to PNG).
"""

import base64
import io
import json
import pathlib
import re
import sys

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

pytestmark = pytest.mark.slow  # end to end: subprocesses, whole runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_introduction_to_jaxdiff", "02_diffusion_models_from_scratch", "03_fine_tuning_and_guidance"]
KERNEL_NAME = "jaxdiff-notebook-test"

# A code cell that shows a figure at top level (not inside a branch that may be skipped).
_SHOWS_FIGURE = re.compile(r"^(plt\.show\(\)|show_images\()", re.MULTILINE)


def _cells(notebook):
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def test_every_notebook_is_a_pair():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == NAMES
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
    assert 'formats = "ipynb,py:percent"' in (NOTEBOOKS / "jupytext.toml").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_py_and_ipynb_are_in_sync(name):
    script = jupytext.read(NOTEBOOKS / f"{name}.py")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert _cells(notebook) == _cells(script), f"regenerate: jupytext --to ipynb notebooks/{name}.py"
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":  # committed with outputs stripped
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernel spec for this interpreter, and the environment the kernel inherits."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxdiff test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JAXDIFF_NOTEBOOK_FAST", "1")
    monkeypatch.delenv("JAXDIFF_NOTEBOOK_ONLINE", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # jaxdiff from this checkout, installed or not
    workdir = tmp_path / "run"
    workdir.mkdir()
    return workdir


def _printed(notebook, label):
    """The number printed after ``label`` in any cell's stdout (None if the line is absent)."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                match = re.search(re.escape(label) + r"\s*([-+0-9.eE]+)", output.text)
                if match:
                    return float(match.group(1))
    return None


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_and_renders_its_figures(name, kernel_env):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=900, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(kernel_env)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails

    figure_cells = 0
    for cell in notebook.cells:
        if cell.cell_type != "code" or not _SHOWS_FIGURE.search(cell.source):
            continue
        figure_cells += 1
        pngs = [o.data["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        assert pngs, f"no figure rendered by the cell:\n{cell.source[:300]}"
        for png in pngs:
            width, height = Image.open(io.BytesIO(base64.b64decode(png))).size
            assert width >= 100 and height >= 50
    assert figure_cells >= 8

    if name == "01_introduction_to_jaxdiff":
        # The hand-written DDPM loop reproduces the sampler; the saved pipeline reloads exactly.
        assert _printed(notebook, "largest difference from the pipeline's images:") < 1e-4
        assert _printed(notebook, "reloaded weights, largest difference:") == 0.0
        torch_vs_jax = _printed(notebook, "UNet, PyTorch vs JAX, largest difference:")
        assert torch_vs_jax is None or torch_vs_jax < 1e-4
        assert (kernel_env / "my_pipeline" / "unet" / "diffusion_pytorch_model.safetensors").exists()

    if name == "03_fine_tuning_and_guidance":
        # Fine-tuning moved the base model's weights; loss guidance moved the samples the loss's way (same
        # seed, same model, by a margin); the export keeps the class embedding and the null label.
        assert _printed(notebook, "fine-tuned vs base weights, largest difference:") > 1e-4
        unguided = _printed(notebook, "mean brightness, unguided:")
        assert _printed(notebook, "with brightness guidance:") > unguided + 0.1
        left = _printed(notebook, "pattern guidance: mean of the left half")
        assert left > _printed(notebook, "of the right half") + 0.2
        for scale in ("1", "2", "4"):  # printed for each guidance scale; tiny FAST models: no bound
            assert 0 <= _printed(notebook, f"class accuracy at guidance {scale}:") <= 1
        assert _printed(notebook, "reloaded export, number of classes:") == 10
        assert _printed(notebook, "reloaded export, null label:") == 10
        export_dir = kernel_env / "workdirs_03" / "digits_cond" / "diffusers"
        assert json.loads((export_dir / "jaxdiff.json").read_text())["null_label"] == 10
        assert json.loads((export_dir / "unet" / "config.json").read_text())["num_class_embeds"] == 11
        torch_vs_jax = _printed(notebook, "conditional UNet, PyTorch vs JAX, largest difference:")
        assert torch_vs_jax is None or torch_vs_jax < 1e-4
