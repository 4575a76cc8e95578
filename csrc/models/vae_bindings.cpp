#include "models/register.hpp"

namespace sdcpp {

void register_vae(pybind11::module_& /*m*/) {}

}  // namespace sdcpp
