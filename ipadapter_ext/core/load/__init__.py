"""Files → what they are: reading containers, detecting adapters from tensor shapes, the model list, compatibility checks, the loaded adapter."""
