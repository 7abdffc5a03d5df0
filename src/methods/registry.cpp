// The built-in methods. A new method adds one line here.
#include "peft/methods/adamix.h"
#include "peft/methods/bitfit.h"
#include "peft/methods/bottleneck_adapter.h"
#include "peft/methods/compacter.h"
#include "peft/methods/dsee/dsee.h"
#include "peft/methods/fact.h"
#include "peft/methods/ia3.h"
#include "peft/methods/kadaptation.h"
#include "peft/methods/llama_adapter.h"
#include "peft/methods/lora.h"
#include "peft/methods/lst/lst.h"
#include "peft/methods/prompt/p_tuning.h"
#include "peft/methods/prompt/prefix_tuning.h"
#include "peft/methods/prompt/prompt_tuning.h"
#include "peft/methods/s3pet/s3pet.h"
#include "peft/methods/sparse_adapter.h"
#include "peft/methods/method.h"

namespace peft::methods {

void register_builtin_methods() {
  register_method(lora_method());
  register_method(ia3_method());
  register_method(bitfit_method());
  register_method(bottleneck_adapter_method());
  register_method(compacter_method());
  register_method(sparse_adapter_method());
  register_method(adamix_method());
  register_method(prefix_tuning_method());
  register_method(prompt_tuning_method());
  register_method(p_tuning_method());
  register_method(llama_adapter_method());
  register_method(kadaptation_method());
  register_method(fact_method());
  register_method(dsee_method());
  register_method(lst_method());
  register_method(s3pet_method());
}

}  // namespace peft::methods
