"""Generate N SAP-style material records (API_PRODUCT_SRV shape with Z-fields), one JSON per line.

Deterministic for a given seed, so runs are comparable. About 1.3 KB per record.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path


def material(i: int, rnd: random.Random) -> dict[str, object]:
    product = f"{100000 + i:018d}"
    plants = [
        {"Plant": plant, "StockQuantity": f"{rnd.randint(0, 500)}.000", "ProfileCode": rnd.choice(["", "Z1"])}
        for plant in rnd.sample(["DE01", "DE02", "US10", "CN20"], k=rnd.randint(1, 3))
    ]
    return {
        "Product": product,
        "ProductType": rnd.choice(["FERT", "HAWA", "FERT", "ZFG"]),
        "ProductGroup": rnd.choice(["HYD-VALVE", "HYD-PUMP", "SEAL", "FITTING"]),
        "BaseUnit": rnd.choice(["ST", "PC", "KAR"]),
        "GrossWeight": f"{rnd.uniform(0.1, 40):.3f}",
        "NetWeight": f"{rnd.uniform(0.1, 40):.3f}",
        "WeightUnit": "KG",
        "ProductStandardID": f"40{rnd.randint(10**10, 10**11 - 1)}",
        "ProductManufacturerNumber": f"mpn-{rnd.randint(1000, 9999)}-{i}",
        "CrossPlantStatus": rnd.choice(["", "", "", "Z9"]),
        "IsMarkedForDeletion": rnd.random() < 0.03,
        "LastChangeDateTime": f"2025-01-{rnd.randint(1, 28):02d}T10:00:00Z",
        "ZZ_COLOR": rnd.choice(["RAL 5015", "RAL 7035", "RAL 9005"]),
        "ZZ_GRADE": rnd.choice(["1.4404", "1.4301", "S235"]),
        "to_Description": {
            "results": [
                {
                    "Product": product,
                    "Language": "EN",
                    "ProductDescription": f"Check valve DN{rnd.randint(10, 80)}",
                },
                {"Product": product, "Language": "DE", "ProductDescription": f"Rückschlagventil {i}"},
            ]
        },
        "to_LongText": {
            "results": [{"Text": "Stainless steel valve for hydraulic lines."}, {"Text": f"Series {i % 97}."}]
        },
        "to_Plant": {"results": plants},
        "to_SalesDelivery": {
            "results": [
                {
                    "ProductSalesOrg": "DE01",
                    "ProductDistributionChnl": "20",
                    "SalesMeasureUnit": "ST",
                    "MinimumOrderQuantity": "1.000",
                    "Price": f"{rnd.uniform(5, 900):.2f}",
                    "Scales": [
                        {"Quantity": "10", "Amount": f"{rnd.uniform(5, 800):.2f}"},
                        {"Quantity": "100", "Amount": f"{rnd.uniform(5, 700):.2f}"},
                    ],
                }
            ]
        },
    }


def generate(count: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    return [json.dumps(material(i, rnd), ensure_ascii=False) for i in range(count)]


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("bench/.data/materials.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(generate(count)) + "\n", encoding="utf-8")
    print(f"wrote {count} records to {out}")
