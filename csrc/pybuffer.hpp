// Read-only raw-byte view of any Python object that exports the buffer protocol.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <pybind11/pybind11.h>

namespace sdcpp {

// Holds a Py_buffer for its lifetime, so the exporter can neither free nor resize the
// memory while we read it with the GIL released. Must be destroyed with the GIL held.
class ByteView {
public:
    ByteView(pybind11::handle obj, const char* what) {
        if (!PyObject_CheckBuffer(obj.ptr())) {
            throw pybind11::type_error(std::string(what) + " must support the buffer protocol "
                                       "(bytes, bytearray, memoryview, numpy array), got " +
                                       std::string(pybind11::str(pybind11::type::handle_of(obj).attr("__name__"))));
        }
        // C_CONTIGUOUS: we read the bytes in memory order, so reject strided/Fortran views.
        if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) {
            pybind11::error_already_set err;
            throw pybind11::value_error(std::string(what) + " must be a C-contiguous buffer: " + err.what());
        }
    }
    ~ByteView() { PyBuffer_Release(&view_); }
    ByteView(const ByteView&) = delete;
    ByteView& operator=(const ByteView&) = delete;

    const uint8_t* data() const { return static_cast<const uint8_t*>(view_.buf); }
    size_t size() const { return static_cast<size_t>(view_.len); }

private:
    Py_buffer view_{};
};

}  // namespace sdcpp
