#include "models/register.hpp"

namespace sdcpp {

void register_clip(pybind11::module_& /*m*/) {}

}  // namespace sdcpp
