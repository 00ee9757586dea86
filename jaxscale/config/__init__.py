"""The declared config schema, the validation machinery that runs each component's own
checks, the workdir record and input errors."""
