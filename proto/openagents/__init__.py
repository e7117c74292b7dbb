"""Namespace of the OpenAgents proto packages (generated code lives next to the .proto files)."""
