"""The experiment harness: configs -> data, model, methods -> the sharded training loop."""
