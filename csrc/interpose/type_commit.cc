// MPI_Type_commit and MPI_Type_free: where the type cache learns and forgets types. (MPI 4 has no
// large-count forms of these two.)
#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/settings.h"
#include "interpose/transfer.h"
#include "interpose/type_cache.h"
#include "interpose/type_decode.h"

namespace pycomm::interpose {
namespace {

// Decodes the freshly committed type; a type without an exact pycomm form stays MPI's alone.
void learn_type(MPI_Datatype handle) {
  try {
    datatype::TypeRef type = decode_type(handle);
    if (type == nullptr) {
      count_event(Event::type_unsupported);
      type_cache().erase(handle);  // a stale entry from a reused handle must not survive
      return;
    }
    type_cache().insert(handle, make_cached_type(std::move(type)));
    count_event(Event::type_cached);
    count_handled(Function::type_commit);
  } catch (...) {
    // The layout could not be built (NotSupported, bad_alloc): MPI keeps the type.
    type_cache().erase(handle);
    count_event(Event::type_unsupported);
  }
}

}  // namespace
}  // namespace pycomm::interpose

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Type_commit(MPI_Datatype* datatype) {
  count_call(Function::type_commit);
  auto real = PYCOMM_REAL(MPI_Type_commit);
  if (real == nullptr) {
    return missing_real_function("MPI_Type_commit");
  }
  const int result = real(datatype);
  if (result == MPI_SUCCESS && datatype != nullptr && settings().types_on()) {
    learn_type(*datatype);
  }
  return result;
}

PYCOMM_INTERPOSE_EXPORT int MPI_Type_free(MPI_Datatype* datatype) {
  count_call(Function::type_free);
  auto real = PYCOMM_REAL(MPI_Type_free);
  if (real == nullptr) {
    return missing_real_function("MPI_Type_free");
  }
  const MPI_Datatype handle = datatype != nullptr ? *datatype : MPI_DATATYPE_NULL;
  const int result = real(datatype);
  if (result == MPI_SUCCESS && handle != MPI_DATATYPE_NULL && type_cache().find(handle) != nullptr) {
    // Transfers in flight hold their own reference to the type.
    type_cache().erase(handle);
    count_handled(Function::type_free);
  }
  return result;
}
