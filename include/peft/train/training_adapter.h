// Attaching the adapter a training run trains, with its method's lifecycle (PeftModel::
// add_adapter with batches) and what a run keeps on disk: a planned config (S3PET's structure)
// is written to <output_dir>/<the method's plan_file> and read back on --resume, where nothing
// is planned or initialised from data again (the training state holds the result).
#pragma once

#include <memory>
#include <string>

#include "peft/data/batch_source.h"
#include "peft/methods/method.h"
#include "peft/peft_model.h"

namespace peft::train {

/// Attaches `config` as `adapter` and returns the config attached (the planned one, if planned).
std::shared_ptr<methods::MethodConfig> add_training_adapter(PeftModel& model, const std::string& adapter,
                                                            const methods::MethodConfig& config,
                                                            const data::BatchSource& batches,
                                                            const std::string& output_dir, bool resume);

}  // namespace peft::train
