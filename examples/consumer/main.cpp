// Loads a GPT-2 and a LoRA delta through the installed package and prints the parameter report.
#include <cstdio>

#include <peft/checkpoint/delta.h>
#include <peft/models/load.h>
#include <peft/peft_model.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: peft_consumer MODEL_DIR ADAPTER_DIR\n");
    return 1;
  }
  try {
    peft::PeftModel model(peft::models::load_pretrained(argv[1]));
    peft::checkpoint::load_adapter(model, argv[2], "default", {/*is_trainable=*/true});
    std::printf("%s\n", model.trainable_parameters_report().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
