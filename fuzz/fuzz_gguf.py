"""Fuzz the GGUF reader: python fuzz/fuzz_gguf.py CORPUS_DIR fuzz/seeds/gguf [libFuzzer flags]"""

from harness import file_harness, main

with __import__("atheris").instrument_imports(include=["sdcpp"]):
    from sdcpp.io.gguf_reader import read_gguf

if __name__ == "__main__":
    main(file_harness(read_gguf, ".gguf"))
