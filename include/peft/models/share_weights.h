// Two task models of one base (a causal LM and a sequence classifier, say) holding its frozen
// weights once: the target's tensors become the source's.
#pragma once

#include <cstdint>

#include "peft/models/model.h"

namespace peft::models {

/// Makes every parameter and buffer of `target` that `source` has under the same name, with the
/// same shape, dtype and device, share the source's storage; `target`'s task head and the tensors
/// its loader newly initialized stay its own. Call it before either model gets adapters or is
/// merged into (a merge would change both). Returns how many tensors are now shared.
int64_t share_weights(PretrainedModel& target, PretrainedModel& source);

}  // namespace peft::models
