-- Every order line joined to its customer's Amperity ID.
SELECT
    order_id,
    amperity_id,
    order_datetime,
    store_id,
    product_category,
    quantity,
    order_amount,
    currency
FROM unified_transactions
