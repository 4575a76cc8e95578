"""Fuzz the safetensors reader: python fuzz/fuzz_safetensors.py CORPUS_DIR fuzz/seeds/safetensors [libFuzzer flags]"""

from harness import file_harness, main

with __import__("atheris").instrument_imports(include=["sdcpp"]):
    from sdcpp.io.safetensors_reader import read_safetensors

if __name__ == "__main__":
    main(file_harness(read_safetensors, ".safetensors"))
