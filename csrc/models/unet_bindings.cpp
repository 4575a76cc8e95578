#include "models/register.hpp"

namespace sdcpp {

void register_unet(pybind11::module_& /*m*/) {}

}  // namespace sdcpp
