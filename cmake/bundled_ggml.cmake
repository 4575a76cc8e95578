# Builds the ggml that sdcpp ships inside its wheel and defines the imported targets sdcpp::ggml and
# sdcpp::ggml-base for _core to link.
#
# Why our own build rather than the libggml-python wheel: that wheel is one portable AVX2 build without
# llamafile's sgemm (~3x slower f16/q8_0 products) and a native rebuild crashes with illegal instructions when
# copied to an older CPU. ggml's GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS instead builds one CPU backend module
# per instruction-set level (x64 .. sapphirerapids on x86, armv8.0 .. armv9.2 on Linux/arm64, m1 .. m4 on
# macOS); at import, ggml_backend_load_all_from_path() scores each against the running CPU and loads the best
# one (csrc/devices.cpp). 14 x86 variants build in ~3.5 min on 2 cores.
#
# Source: the sdist of the pinned libggml-python (ggml 0.20.2 under ggml/), fetched with pip -- sdcpp's repository
# holds no ggml source. Set SDCPP_GGML_SOURCE (CMake variable or environment) to that sdist's .tar.gz or to a ggml
# source folder to build offline. SDCPP_GGML_CMAKE_ARGS adds ggml options, e.g. "-DGGML_CUDA=ON" (docs/install.md).

include(ExternalProject)

# The pin lives in one file that the Python side (sdcpp build-ggml) reads too.
file(READ "${CMAKE_CURRENT_SOURCE_DIR}/python/sdcpp/ggml_pin.json" _pin)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/python/sdcpp/ggml_pin.json")
string(JSON _pin_package GET "${_pin}" package)
string(JSON _pin_version GET "${_pin}" version)
string(JSON SDCPP_GGML_SDIST_FILE GET "${_pin}" sdist)
string(JSON SDCPP_GGML_SDIST_SHA256 GET "${_pin}" sha256)
string(JSON SDCPP_GGML_COMMIT GET "${_pin}" ggml_commit)
set(SDCPP_GGML_SDIST "${_pin_package}==${_pin_version}")
# ggml's options, shared with build-ggml so the modules it adds match this build. Backend modules go into lib/
# beside libggml, the folder ggml_backend_load_all_from_path() is given. ggml asks git for its commit, which inside
# sdcpp's checkout would be sdcpp's (hence GIT_EXE=OFF): give the sdist's instead.
set(_ggml_args "-DGGML_BUILD_COMMIT=${SDCPP_GGML_COMMIT}")
string(JSON _n LENGTH "${_pin}" cmake_args)
math(EXPR _last "${_n} - 1")
foreach(_i RANGE ${_last})
    string(JSON _arg GET "${_pin}" cmake_args ${_i})
    list(APPEND _ggml_args "${_arg}")
endforeach()

set(SDCPP_GGML_SOURCE "$ENV{SDCPP_GGML_SOURCE}" CACHE STRING
    "ggml source: a folder with ggml's CMakeLists.txt, or the libggml-python sdist; empty: fetch it with pip")
set(SDCPP_GGML_CMAKE_ARGS "$ENV{SDCPP_GGML_CMAKE_ARGS}" CACHE STRING
    "extra ggml CMake options (a ;-list), e.g. -DGGML_CUDA=ON;-DCMAKE_CUDA_ARCHITECTURES=90")
option(SDCPP_GGML_ALL_VARIANTS "build every CPU variant (OFF: one portable AVX2-class variant, faster to build)" ON)

# Verifies the pinned sdist and unpacks it; sets _ggml_src to the ggml folder inside.
function(sdcpp_unpack_ggml_sdist archive)
    file(SHA256 "${archive}" _sha)
    if(NOT _sha STREQUAL SDCPP_GGML_SDIST_SHA256)
        message(FATAL_ERROR "sdcpp: ${archive} has sha256 ${_sha}, expected ${SDCPP_GGML_SDIST_SHA256} "
                            "(${SDCPP_GGML_SDIST})")
    endif()
    set(_dest "${CMAKE_BINARY_DIR}/ggml-src")
    if(NOT EXISTS "${_dest}/.unpacked")
        file(REMOVE_RECURSE "${_dest}")
        file(ARCHIVE_EXTRACT INPUT "${archive}" DESTINATION "${_dest}")
        file(TOUCH "${_dest}/.unpacked")
    endif()
    file(GLOB _roots LIST_DIRECTORIES true "${_dest}/*/ggml")
    if(NOT _roots)
        message(FATAL_ERROR "sdcpp: no ggml/ folder inside ${archive}")
    endif()
    list(GET _roots 0 _root)
    set(_ggml_src "${_root}" PARENT_SCOPE)
endfunction()

if(SDCPP_GGML_SOURCE AND IS_DIRECTORY "${SDCPP_GGML_SOURCE}")
    if(EXISTS "${SDCPP_GGML_SOURCE}/ggml/CMakeLists.txt")  # an unpacked libggml-python sdist
        set(_ggml_src "${SDCPP_GGML_SOURCE}/ggml")
    else()
        set(_ggml_src "${SDCPP_GGML_SOURCE}")
    endif()
elseif(SDCPP_GGML_SOURCE)
    sdcpp_unpack_ggml_sdist("${SDCPP_GGML_SOURCE}")
else()
    set(_archive "${CMAKE_BINARY_DIR}/ggml-sdist/${SDCPP_GGML_SDIST_FILE}")
    if(NOT EXISTS "${_archive}")
        message(STATUS "sdcpp: fetching the ggml source (${SDCPP_GGML_SDIST} sdist) with pip")
        # --no-deps: only the archive is wanted (pip still prepares its metadata, in an isolated env of its own).
        execute_process(
            COMMAND "${Python_EXECUTABLE}" -m pip download --disable-pip-version-check --no-deps
                    --no-binary=${_pin_package} -d "${CMAKE_BINARY_DIR}/ggml-sdist"
                    "${SDCPP_GGML_SDIST}"
            RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
        if(NOT _rc EQUAL 0 OR NOT EXISTS "${_archive}")
            message(FATAL_ERROR "sdcpp: could not fetch ${SDCPP_GGML_SDIST} with pip (${_rc}):\n${_out}${_err}\n"
                                "Set SDCPP_GGML_SOURCE to a copy of ${SDCPP_GGML_SDIST_FILE} or a ggml folder.")
        endif()
    endif()
    sdcpp_unpack_ggml_sdist("${_archive}")
endif()
if(NOT EXISTS "${_ggml_src}/CMakeLists.txt" OR NOT EXISTS "${_ggml_src}/include/ggml.h")
    message(FATAL_ERROR "sdcpp: ${_ggml_src} is not a ggml source folder")
endif()
message(STATUS "sdcpp: ggml source ${_ggml_src}")

set(SDCPP_GGML_PREFIX "${CMAKE_BINARY_DIR}/ggml")
if(SDCPP_GGML_ALL_VARIANTS)
    list(APPEND _ggml_args -DGGML_CPU_ALL_VARIANTS=ON)
endif()
list(APPEND _ggml_args "-DCMAKE_C_COMPILER=${CMAKE_C_COMPILER}" "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}")
if(CMAKE_OSX_ARCHITECTURES)
    list(APPEND _ggml_args "-DCMAKE_OSX_ARCHITECTURES=${CMAKE_OSX_ARCHITECTURES}")
endif()
if(CMAKE_OSX_DEPLOYMENT_TARGET)
    list(APPEND _ggml_args "-DCMAKE_OSX_DEPLOYMENT_TARGET=${CMAKE_OSX_DEPLOYMENT_TARGET}")
endif()
list(APPEND _ggml_args ${SDCPP_GGML_CMAKE_ARGS})

if(APPLE)
    set(_rpath "@loader_path")
    set(_ggml_lib_file "libggml.0.dylib")
    set(_ggml_base_file "libggml-base.0.dylib")
else()
    set(_rpath "$ORIGIN")
    set(_ggml_lib_file "libggml.so.0")
    set(_ggml_base_file "libggml-base.so.0")
endif()

ExternalProject_Add(ggml_bundle
    SOURCE_DIR "${_ggml_src}"
    BINARY_DIR "${CMAKE_BINARY_DIR}/ggml-build"
    INSTALL_DIR "${SDCPP_GGML_PREFIX}"
    CMAKE_ARGS ${_ggml_args} "-DCMAKE_INSTALL_PREFIX=<INSTALL_DIR>"
    # A cache entry, not a command-line -D: $ORIGIN must reach the linker unmangled by the shell or Ninja.
    CMAKE_CACHE_ARGS "-DCMAKE_INSTALL_RPATH:STRING=${_rpath}"
    BUILD_BYPRODUCTS "${SDCPP_GGML_PREFIX}/lib/${_ggml_lib_file}" "${SDCPP_GGML_PREFIX}/lib/${_ggml_base_file}"
    USES_TERMINAL_BUILD ON)

foreach(_pair "ggml;${_ggml_lib_file}" "ggml-base;${_ggml_base_file}")
    list(GET _pair 0 _name)
    list(GET _pair 1 _file)
    add_library(sdcpp::${_name} SHARED IMPORTED GLOBAL)
    set_target_properties(sdcpp::${_name} PROPERTIES IMPORTED_LOCATION "${SDCPP_GGML_PREFIX}/lib/${_file}")
    add_dependencies(sdcpp::${_name} ggml_bundle)
endforeach()
set(SDCPP_GGML_INCLUDE_DIR "${_ggml_src}/include")
set(SDCPP_GGML_LIB_DIR "${SDCPP_GGML_PREFIX}/lib")

# Into the wheel: the versioned libraries under their sonames (wheels hold no symlinks, so each is copied once from
# the file the link points at: libggml, libggml-base, and libggml-cpu when built without GGML_BACKEND_DL) and every
# backend module (libggml-cpu-*.so, libggml-cuda.so, ...: unversioned, plain files).
if(APPLE)
    set(_soname_glob "libggml*.0.dylib")
else()
    set(_soname_glob "libggml*.so.0")
endif()
install(CODE "
    set(_dest \"\${CMAKE_INSTALL_PREFIX}/sdcpp/lib\")
    file(MAKE_DIRECTORY \"\${_dest}\")
    file(GLOB _libs \"${SDCPP_GGML_LIB_DIR}/${_soname_glob}\")
    foreach(_f \${_libs})
        file(REAL_PATH \"\${_f}\" _real)
        get_filename_component(_name \"\${_f}\" NAME)
        configure_file(\"\${_real}\" \"\${_dest}/\${_name}\" COPYONLY)
    endforeach()
    file(GLOB _modules \"${SDCPP_GGML_LIB_DIR}/libggml-*.so\")
    foreach(_m \${_modules})
        if(NOT IS_SYMLINK \"\${_m}\")
            configure_file(\"\${_m}\" \"\${_dest}\" COPYONLY)
        endif()
    endforeach()
    message(STATUS \"sdcpp: bundled ggml into \${_dest}\")
")
# ggml's MIT licence travels with its binaries, and so does the MIT notice of llamafile's sgemm, compiled into every
# CPU module: it lives only in that source file's header comment, so it is cut out of the source being built.
install(FILES "${_ggml_src}/LICENSE" DESTINATION sdcpp/lib RENAME LICENSE-ggml.txt)
set(_sgemm "${_ggml_src}/src/ggml-cpu/llamafile/sgemm.cpp")
if(EXISTS "${_sgemm}")
    file(READ "${_sgemm}" _head LIMIT 4096)
    string(FIND "${_head}" "\n\n" _end)  # the notice is the comment block before the first blank line
    string(SUBSTRING "${_head}" 0 ${_end} _notice)
    string(REGEX REPLACE "(^|\n)// ?" "\\1" _notice "${_notice}")
    file(WRITE "${CMAKE_BINARY_DIR}/LICENSE-llamafile-sgemm.txt" "${_notice}\n")
    install(FILES "${CMAKE_BINARY_DIR}/LICENSE-llamafile-sgemm.txt" DESTINATION sdcpp/lib)
endif()
