"""The package list in pyproject.toml covers every package directory; the library never imports torch."""

import subprocess
import sys

import tomllib
from conftest import ROOT


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jukebox_flax").rglob("__init__.py")}
    found |= {"jukebox_flax_convert"} if (ROOT / "convert" / "__init__.py").exists() else set()
    assert found <= listed, f"add to pyproject.toml packages: {sorted(found - listed)}"


def test_library_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import jukebox_flax as jf, jukebox_flax.cli, jukebox_flax.config, jukebox_flax.checkpoint\n"
        "print(jf.preset('5b').priors[2].width)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4800"
