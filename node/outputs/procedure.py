"""The procedure a TID 1500 report names: the examination that was read, as a LOINC code.

A reader (and a PACS filing the report) sees "CT Chest", not "CT unspecified body region", for
a chest CT. The body region comes from the source series the way routing reads it
(BodyPartExamined, then the anatomic region code, then the descriptions); a modality and
region without a code here fall back to the modality's "unspecified body region" code (CID
100), and a modality without one to SNOMED "Imaging".
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from models.api import PluginInput
from node.outputs.context import OutputContext
from routers.attributes import dataset_attributes
from routers.bodypart import BodyPartTable, Region

RADIOGRAPHY = frozenset({"CR", "DX"})

UNSPECIFIED_REGION: dict[str, Code] = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
    "CR": codes.LN.XRUnspecifiedBodyRegion,
    "DX": codes.LN.XRUnspecifiedBodyRegion,
}
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging")

CT_CHEST = Code("24627-2", "LN", "CT Chest")
XR_CHEST_SINGLE_VIEW = Code("36554-4", "LN", "XR Chest Single view")
XR_CHEST_TWO_VIEWS = Code("36643-5", "LN", "XR Chest 2 Views")


def procedure_reported(source: PluginInput, context: OutputContext) -> Code:
    """The context's procedure if it names one, else the modality and body region's."""
    if context.procedure_reported is not None:
        return context.procedure_reported
    modality = source.modality.upper()
    region = (
        BodyPartTable.default().decide(dataset_attributes(source.headers[0])).region
        if source.headers
        else Region.UNKNOWN
    )
    if region is Region.CHEST and modality == "CT":
        return CT_CHEST
    if region is Region.CHEST and modality in RADIOGRAPHY:
        views = len({frame.sop_instance_uid for frame in source.sources})
        if views == 1:
            return XR_CHEST_SINGLE_VIEW
        if views == 2:
            return XR_CHEST_TWO_VIEWS
    return UNSPECIFIED_REGION.get(modality, IMAGING_PROCEDURE)
