"""CLI sub-commands of lora-gateway, one module each."""
