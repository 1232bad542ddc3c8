// Parsing helpers shared by subcommands.
#pragma once
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "model/mla.h"

namespace epserve::cli {

// "1,2,3" → {1, 2, 3}; names the offending item on error.
std::vector<int> parse_token_list(const std::string& text, const std::string& what);
kernels::Numerics parse_numerics(const std::string& text);
model::AttentionPath parse_attention_path(const std::string& text);

}  // namespace epserve::cli
