from setuptools import find_packages, setup

setup(
    name="hyperscale",
    version="0.1.0",
    description="Parameter-efficient multi-task fine-tuning of T5 with shared hypernetworks (HyperFormer++) on DeepSpeed",
    packages=find_packages(include=["hyperscale", "hyperscale.*"]),
    package_data={
        "hyperscale": [
            "configs/*.yaml",
            "ds_configs/*.json",
            "resources/t5/spiece.model",
            "resources/t5/README.md",
            "resources/glue_sample/SOURCES.md",
            "resources/glue_sample/glue/*/*.tsv",
            "resources/glue_sample/superglue/*/*.jsonl",
        ]
    },
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.16",
        "transformers>=4.46",
        "datasets>=2.20",
        "sentencepiece",
        "tensorboard",
        "pyyaml",
        "safetensors",
        "accelerate",  # transformers needs it for HfDeepSpeedConfig (deepspeed.build_sharded)
        "scikit-learn",
        "scipy",
        "tqdm",
        "numpy",
    ],
    extras_require={"test": ["pytest", "matplotlib"], "peft": ["peft"], "plots": ["matplotlib"]},
    entry_points={"console_scripts": ["hyperscale=hyperscale.cli:main"]},
)
