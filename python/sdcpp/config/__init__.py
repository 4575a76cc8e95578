"""One model configuration, computed once at load: families as data (families.py), each component's architecture
read from shapes and checked (arch.py), and the ModelConfig the plan, pipeline and graphs read (model_config.py).

Import the submodules directly; this package imports nothing so that detect.py can read the family table."""
