from setuptools import find_packages, setup

# package_dir={"": "."}: the import root is named explicitly, so that `pip install -e .` installs a path
# entry (a .pth line naming this checkout, as `setup.py develop` did) rather than setuptools' default
# import hook for flat layouts. Python's path finder prefers a regular package anywhere on sys.path over a
# directory without __init__.py, so `import hyperscale` gets the installed package even from the folder that
# holds a checkout named hyperscale/ (the hook is asked only after the path finder, which would have taken
# that checkout for a namespace package: pypa/setuptools#3557). tests/test_readme.py checks it.
setup(
    name="hyperscale",
    version="0.1.0",
    description="Parameter-efficient multi-task fine-tuning of T5 with shared hypernetworks (HyperFormer++) on DeepSpeed",
    packages=find_packages(include=["hyperscale", "hyperscale.*"]),
    package_dir={"": "."},
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
    extras_require={"test": ["pytest", "matplotlib"], "peft": ["peft"], "plots": ["matplotlib"],
                    "rouge": ["rouge-score"]},  # the rouge_l metric of task specs (README "Your own tasks")
    entry_points={"console_scripts": ["hyperscale=hyperscale.cli:main"]},
)
