"""The lowest stage: mesh and logical sharding rules, paths, registries, parameter paths.

Imports nothing else of jaxscale."""
