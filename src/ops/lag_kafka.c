#include "ops/lag_internal.h"
#include "common/util.h"
int lag_kafka_sample(const bus_config *cfg, const lag_options *opt, lag_acc *acc, char *err,
                     size_t errlen)
{
    return util_error(err, errlen, "not yet");
}
