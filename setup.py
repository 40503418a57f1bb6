"""Installs ``hf_prune_autoload.pth`` into site-packages, from a wheel and from an editable install.

Everything else is in pyproject.toml. The ``.pth`` file lets transformers load stripped models without
``import hf_prune`` (see hf_prune_autoload.py); setuptools has no option for a file at the root of
site-packages, so the two commands that build wheels add it.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "hf_prune_autoload.pth"
HERE = Path(__file__).resolve().parent


class BuildPyWithPth(build_py):
    """Regular wheels: the ``.pth`` file at the root of the build directory, i.e. of site-packages."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(HERE / PTH), str(Path(self.build_lib) / PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


class EditableWheelWithPth(editable_wheel):
    """Editable installs (PEP 660): the same ``.pth`` file beside the one that points at the checkout."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):  # noqa: ANN001, ANN202
        files, mapping = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        self.copy_file(str(HERE / PTH), str(Path(unpacked_wheel) / PTH), preserve_mode=False)
        return files, mapping


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
