"""mmft: parameter-efficient fine-tuning of vision-language models with LoRA, DoRA, VeRA and DVoRA."""

__version__ = "0.1.0"
