// Precompiled header: LibTorch's headers dominate compile time; parse them once.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
